"""A torch Dataset over panoptic records: decode, augment image and segment map together, encode with the processor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detrkit.processing.segmentation_annotations import read_panoptic_map

from .panoptic_records import PanopticData

__all__ = ["PanopticDataset", "horizontal_flip"]


class PanopticDataset(torch.utils.data.Dataset):
    """Items ``{"pixel_values": (3, H, W), "labels": dict}`` with the processor's panoptic labels: ``masks``
    (N, H, W) bool, ``boxes`` (from the masks), ``class_labels`` (contiguous), ``iscrowd``, ``area``, ...;
    :class:`~detrkit.data.collator.DetectionCollator` pads a list of them (masks included).

    ``augment(image, id_map, rng) -> (image, id_map)`` (e.g. :func:`horizontal_flip`) transforms the PIL image and
    its (H, W) segment-id map together before encoding; ``rng`` is drawn from (seed, epoch, index), so an item is
    the same in every run (``set_epoch`` moves to the next epoch's draws). Segments an augmentation removes
    entirely are dropped, and areas are counted on the augmented map.
    """

    def __init__(self, data: PanopticData, processor, do_resize: bool = True, augment=None, seed: int = 0):
        self.data = data
        self.processor = processor
        self.do_resize = do_resize
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._to_label = data.category2label

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data.records)

    def __getitem__(self, index: int) -> dict:
        record = self.data.records[index]
        if isinstance(record.image, (str, Path)):
            with Image.open(record.image) as image:
                image = image.convert("RGB")
        else:
            image = record.image.convert("RGB") if isinstance(record.image, Image.Image) else record.image
        segments = [dict(s, category_id=self._to_label[int(s["category_id"])]) for s in record.segments_info]
        annotation = {"image_id": record.image_id, "segments_info": segments}
        if self.augment is not None:
            id_map = read_panoptic_map(record.panoptic_png, f"image {record.image_id}")
            image, id_map = self.augment(image, id_map, np.random.default_rng([self.seed, self.epoch, index]))
            present = set(np.unique(id_map).tolist())
            annotation["segments_info"] = [{k: v for k, v in s.items() if k != "area"} for s in segments
                                           if int(s["id"]) in present]
            annotation["panoptic_map"], masks_path = id_map, None
        elif isinstance(record.panoptic_png, (str, Path)):
            annotation["file_name"] = Path(record.panoptic_png).name
            masks_path = Path(record.panoptic_png).parent
        else:
            annotation["panoptic_map"], masks_path = record.panoptic_png, None
        encoded = self.processor(images=image, annotations=annotation, format="coco_panoptic",
                                 masks_path=masks_path, do_resize=self.do_resize, do_pad=False,
                                 return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"][0], "labels": dict(encoded["labels"][0])}


def horizontal_flip(probability: float = 0.5):
    """An `augment` for PanopticDataset: mirror image and map left-right with `probability`."""
    def flip(image, id_map, rng):
        if rng.random() < probability:
            return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), np.ascontiguousarray(id_map[:, ::-1])
        return image, id_map
    return flip
