#!/usr/bin/env python
"""COCO evaluation of a detector on a data set: the same as `detrkit evaluate`
(see detrkit/inference/evaluate_command.py).

    python scripts/eval.py outputs/demo/model --data shapes-b

(Not named evaluate.py: Python puts this folder first on the path, where that name would hide the `evaluate`
package that detrkit's COCO metric builds on.)
"""
import sys

from detrkit.inference.evaluate_command import main

if __name__ == "__main__":
    sys.exit(main())
