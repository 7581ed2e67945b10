"""`detrkit train`: train or fine-tune a DETR-family detector with accelerate.

    detrkit train                                  # the demo: fine-tune the shipped checkpoint on shapes-b (CPU)
    detrkit train --model SenseTime/deformable-detr --data path/to/coco
    detrkit train --model deformable-detr --data path/to/yolo --set model_overrides.use_pretrained_backbone=true
    accelerate launch --num_processes 4 --mixed_precision bf16 -m detrkit train --model ... --data ...
    detrkit train --model ... --data ... --output-dir runs/mine --resume latest     # continue a killed run

Every key of detrkit.training.config.TrainConfig is a flag (see --help).
"""
from __future__ import annotations

from .errors import run_command


def main(argv: list[str] | None = None) -> int:
    def command(args):
        from .config import parse_config
        from .loop import train

        config = parse_config(args)
        if config.task == "detection":
            train(config)
        else:  # panoptic / instance: DETR's mask head on the detector
            from .segmentation import train_segmentation

            train_segmentation(config)

    return run_command("train", argv, command)
