#!/usr/bin/env python
"""Train or fine-tune a DETR-family detector: the same as `detrkit train` (see detrkit/training/train.py).

    python scripts/train.py                       # the demo: fine-tune the shipped checkpoint on shapes-b (CPU)
    python scripts/train.py --model SenseTime/deformable-detr --data path/to/coco
"""
import sys

from detrkit.training.train import main

if __name__ == "__main__":
    sys.exit(main())
