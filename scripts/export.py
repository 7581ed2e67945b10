#!/usr/bin/env python
"""Export a model to ONNX: `python scripts/export.py MODEL --output FILE [--opset N] [--pixel-mask] [--postprocess]`
(the same as `detrkit export`)."""
import sys

from detrkit.deploy.export_command import main

if __name__ == "__main__":
    sys.exit(main())
