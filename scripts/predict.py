#!/usr/bin/env python
"""Detect objects in images, folders, globs or URLs: the same as `detrkit predict` (see detrkit/training/predict.py).

    python scripts/predict.py outputs/demo/model image1.png folder/ "shots/*.jpg" https://example.com/cat.jpg
"""
import sys

from detrkit.training.predict import main

if __name__ == "__main__":
    sys.exit(main())
