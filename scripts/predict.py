#!/usr/bin/env python
"""Detect objects in images, folders, globs or URLs: the same as `detrkit predict`
(see detrkit/inference/predict_command.py).

    python scripts/predict.py outputs/demo/model image1.png folder/ "shots/*.jpg" https://example.com/cat.jpg
"""
import sys

from detrkit.inference.predict_command import main

if __name__ == "__main__":
    sys.exit(main())
