#!/usr/bin/env python
"""Train or fine-tune a DETR-family detector with accelerate.

    python scripts/train.py                       # the demo: fine-tune the shipped checkpoint on shapes-b (CPU)
    python scripts/train.py --config scripts/configs/pretrain_shapes_a.yaml     # the demo checkpoint's recipe
    python scripts/train.py --model detr-resnet-50 --data path/to/coco --set lr=1e-4 --epochs 50
    accelerate launch --num_processes 4 scripts/train.py --config my.yaml --mixed-precision bf16
    python scripts/train.py --config my.yaml --resume latest    # continue a killed run exactly

Every key of scripts/training/config.py:TrainConfig is a flag (--batch-size 8) and a --set override
(--set model_overrides.d_model=128); see --help. Outputs go to --output-dir: checkpoints/, history.jsonl,
training.png, metrics.json, model/ (save_pretrained + model card) and predictions.png.
"""
import sys
from pathlib import Path

# Python puts this folder first on sys.path, where evaluate.py would shadow the `evaluate` package: move it last.
HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != HERE] + [HERE]

from training.config import parse_config  # noqa: E402
from training.loop import train  # noqa: E402


def main(argv=None):
    train(parse_config(argv))


if __name__ == "__main__":
    main()
