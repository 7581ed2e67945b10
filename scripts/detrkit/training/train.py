"""`detrkit train`: train or fine-tune a DETR-family detector with accelerate.

    detrkit train                                  # the demo: fine-tune the shipped checkpoint on shapes-b (CPU)
    detrkit train --model SenseTime/deformable-detr --data path/to/coco
    detrkit train --model deformable-detr --data path/to/yolo --set model_overrides.use_pretrained_backbone=true
    accelerate launch --num_processes 4 --mixed_precision bf16 -m detrkit train --model ... --data ...
    detrkit train --model ... --data ... --output-dir runs/mine --resume latest     # continue a killed run

Every key of detrkit.training.config.TrainConfig is a flag (see --help).
"""
from __future__ import annotations

from detrkit.cli.runner import run_command


def main(argv: list[str] | None = None) -> int:
    def command(args):
        from .config import parse_config
        from .accelerate_device import select_device

        config = parse_config(args)
        select_device(config)  # before anything starts CUDA
        train(config)

    return run_command("train", argv, command)


def train(config) -> dict:
    """Train as `config` (a TrainConfig) says, detection or DETR's panoptic / instance segmentation; returns the
    metrics written to metrics.json."""
    if config.task == "detection":
        from .detection import train_detection

        return train_detection(config)
    from .segmentation import train_segmentation  # DETR's mask head on the detector

    return train_segmentation(config)
