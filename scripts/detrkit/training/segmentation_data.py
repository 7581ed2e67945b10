"""The data of DETR's segmentation training (segmentation.py): panoptic, a COCO panoptic folder or a built-in
panoptic set (shapes-a-panoptic, shapes-b-panoptic); instance, any detection layout whose objects carry a COCO
`segmentation`. Masks come from the image processor (resized with the image, padded with the batch). No
augmentation: the images are resized as at evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from detrkit.errors import UsageError

from .config import TrainConfig


@dataclass
class SegmentationData:
    """Both splits encoded with masks, and what evaluation needs: the ground truth per image id, the stuff labels
    (fused in panoptic post-processing) and the map from the model's labels to the data's category ids."""

    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset
    id2label: dict[int, str]
    eval_records: list
    stuff_label_ids: set[int]
    label2category: dict[int, int]
    categories: list[dict]


def load_segmentation_data(config: TrainConfig, processor, log=print) -> SegmentationData:
    """Panoptic: a COCO panoptic folder or a built-in panoptic set (shapes-a-panoptic, shapes-b-panoptic), through
    the processor's coco_panoptic path. Instance: any detection layout whose objects carry a COCO `segmentation`
    (the data layer's loaders), through the processor's `return_segmentation_masks`."""
    if config.task == "panoptic":
        from detrkit.data.builtin.panoptic_shapes import BUILTIN_PANOPTIC_DATASETS, write_builtin_panoptic_dataset
        from detrkit.data.coco_panoptic import load_coco_panoptic
        from detrkit.data.panoptic_dataset import PanopticDataset

        root = Path(str(config.data)).expanduser()
        if str(config.data) in BUILTIN_PANOPTIC_DATASETS:
            sizes = {k: v for k, v in (("num_train", config.builtin_num_train),
                                        ("num_val", config.builtin_num_val)) if v}
            suffix = "".join(f"-{v}" for v in sizes.values())
            root = Path(config.data_cache).expanduser() / f"{config.data}-{config.image_size}px{suffix}"
            write_builtin_panoptic_dataset(str(config.data), root, image_size=config.image_size, **sizes)
            log(f"data: built-in {config.data} in {root}")
        elif not root.exists():
            raise UsageError(f"--task panoptic --data {config.data}: not a COCO panoptic folder or a built-in "
                             f"panoptic set ({', '.join(BUILTIN_PANOPTIC_DATASETS)})")
        train, evaluation = (load_coco_panoptic(root, split) for split in (config.train_split, config.eval_split))
        if train.categories != evaluation.categories:
            raise UsageError(f"--data {config.data}: {config.train_split} and {config.eval_split} have different "
                             "categories")
        train.records[:] = train.records[:config.max_train_samples or len(train.records)]
        evaluation.records[:] = evaluation.records[:config.max_eval_samples or len(evaluation.records)]
        log(f"data: {len(train)} train / {len(evaluation)} eval images, {len(train.categories)} classes "
            f"({len(train.stuff_label_ids)} stuff): {', '.join(train.id2label.values())}")
        return SegmentationData(PanopticDataset(train, processor), PanopticDataset(evaluation, processor),
                                train.id2label, evaluation.records, train.stuff_label_ids, train.label2category,
                                train.categories)

    from .detection_data import load_split, resolve_source

    source = resolve_source(config, log)
    train, evaluation = (load_split(source, split, config, log) for split in (config.train_split, config.eval_split))
    log(f"data: {len(train)} train / {len(evaluation)} eval images, {len(train.categories)} classes")
    categories = [dict(c, isthing=1) for c in train.categories.to_coco()]
    return SegmentationData(InstanceMaskDataset(train, processor), InstanceMaskDataset(evaluation, processor),
                            train.id2label, list(evaluation), set(), {i: i for i in train.id2label}, categories)


class InstanceMaskDataset(torch.utils.data.Dataset):
    """Detection records whose objects carry COCO `segmentation`s, encoded with `return_segmentation_masks`."""

    def __init__(self, records, processor):
        self.records = records
        self.processor = processor

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        from detrkit.data.images import open_image

        record = self.records[index]
        encoded = self.processor(images=open_image(record.image), annotations=record.target(),
                                 return_segmentation_masks=True, do_pad=False, return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"][0], "labels": dict(encoded["labels"][0])}


def segmentation_collator(processor):
    from detrkit.data.collator import DetectionCollator

    return DetectionCollator(processor)  # pads images and the labels' masks


__all__ = ["InstanceMaskDataset", "SegmentationData", "load_segmentation_data", "segmentation_collator"]
