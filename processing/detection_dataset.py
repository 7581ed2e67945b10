"""A torch Dataset over validated detection records: decode, augment, and encode with the image processor.

Each item is ``{"pixel_values": (3, H, W) float tensor, "labels": dict}`` with the processor's labels
(``class_labels``, ``boxes`` normalized cx, cy, w, h, ``area``, ``iscrowd``, ``orig_size``, ``size``, ``image_id``);
:class:`~detrkit.processing.collator.DetectionCollator` pads a list of them into a batch.
"""
from __future__ import annotations

import torch

from .detection_data import DetectionData, DetectionRecord, open_image
from .augmentations import augment

__all__ = ["DetectionDataset"]


class DetectionDataset(torch.utils.data.Dataset):
    """``records`` encoded by ``processor``; ``transforms`` (e.g. :func:`detr_train_transforms`) for training only.

    The training transforms own the resizing (DETR's multi-scale resize), so the processor's resize is skipped
    when ``transforms`` is given; pass ``resize_in_processor`` to override. Without transforms (evaluation) the
    processor resizes, and ``orig_size`` in the labels is the image's true size, as post-processing needs.
    """

    def __init__(self, records: DetectionData | list[DetectionRecord], processor, transforms=None,
                 resize_in_processor: bool | None = None):
        self.records = list(records.records if isinstance(records, DetectionData) else records)
        self.processor = processor
        self.transforms = transforms
        self.resize_in_processor = transforms is None if resize_in_processor is None else resize_in_processor

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image, annotations = open_image(record.image), record.annotations
        if self.transforms is not None:
            image, annotations = augment(self.transforms, image, annotations)
        encoded = self.processor(images=image, annotations={"image_id": record.image_id, "annotations": annotations},
                                 do_resize=self.resize_in_processor, do_pad=False, return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"][0], "labels": dict(encoded["labels"][0])}
