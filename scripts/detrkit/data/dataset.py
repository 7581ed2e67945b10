"""A torch Dataset over validated detection records: decode, augment, and encode with the image processor.

Each item is ``{"pixel_values": (3, H, W) float tensor, "labels": dict}`` with the processor's labels
(``class_labels``, ``boxes`` normalized cx, cy, w, h, ``area``, ``iscrowd``, ``orig_size``, ``size``, ``image_id``);
:class:`~detrkit.data.collator.DetectionCollator` pads a list of them into a batch.

Records are checked by their image header only, so an image can still fail to decode here, inside a DataLoader
worker. Such an image is logged, counted in :class:`SkippedImages` (shared by the workers) and replaced by the
next record, so a batch keeps its size and no worker dies for one bad file.
"""
from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from multiprocessing.context import get_spawning_popen

import torch
from PIL import UnidentifiedImageError

from .augmentations import augment
from .images import open_image
from .record_table import RecordTable
from .records import DetectionData, DetectionRecord

__all__ = ["DetectionDataset", "SkippedImages"]

logger = logging.getLogger(__name__)

DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)
MAX_REPLACEMENTS = 16  # so many unreadable images in a row mean the data is gone, not a few bad files


class SkippedImages:
    """How many times an image failed to decode and was skipped, across all DataLoader workers.

    A counter in shared memory: workers started by fork inherit it, workers started by spawn receive it while
    spawning; pickled any other way it becomes an independent copy holding the count so far."""

    def __init__(self, count: int = 0):
        self._value = multiprocessing.Value("q", count)

    @property
    def count(self) -> int:
        return self._value.value

    def add(self) -> None:
        with self._value.get_lock():
            self._value.value += 1

    def __getstate__(self):
        return {"value": self._value} if get_spawning_popen() is not None else {"count": self.count}

    def __setstate__(self, state):
        self._value = state["value"] if "value" in state else multiprocessing.Value("q", state["count"])

    def __repr__(self) -> str:
        return f"SkippedImages(count={self.count})"


class DetectionDataset(torch.utils.data.Dataset):
    """``records`` encoded by ``processor``; ``transforms`` (e.g. :func:`detr_train_transforms`) for training only.

    The training transforms own the resizing (DETR's multi-scale resize), so the processor's resize is skipped
    when ``transforms`` is given; pass ``resize_in_processor`` to override. Without transforms (evaluation) the
    processor resizes, and ``orig_size`` in the labels is the image's true size, as post-processing needs.
    ``skipped`` counts the images that failed to decode (see the module docstring).
    """

    def __init__(self, records: DetectionData | Sequence[DetectionRecord], processor, transforms=None,
                 resize_in_processor: bool | None = None):
        records = records.records if isinstance(records, DetectionData) else records
        # an Arrow RecordTable is kept as it is: workers share its buffers instead of copying Python objects
        self.records = records if isinstance(records, Sequence) else list(records)
        self.processor = processor
        self.transforms = transforms
        self.resize_in_processor = transforms is None if resize_in_processor is None else resize_in_processor
        self.skipped = SkippedImages()

    def __len__(self) -> int:
        return len(self.records)

    def _record(self, index: int) -> DetectionRecord:
        if isinstance(self.records, RecordTable):
            return self.records.get(index, segmentation=False)  # no model here reads polygons
        return self.records[index]

    def _decode(self, index: int):
        """(record, image) of ``index``, or of the next readable record after skipping unreadable ones."""
        for attempt in range(MAX_REPLACEMENTS):
            record = self._record((index + attempt) % len(self.records))
            try:
                return record, open_image(record.image)
            except DECODE_ERRORS as err:
                self.skipped.add()
                logger.warning("image %s (%s) cannot be decoded, skipped (%s: %s); %d skip(s) so far",
                               record.image_id, _describe(record.image), type(err).__name__, err, self.skipped.count)
        raise RuntimeError(f"{MAX_REPLACEMENTS} images in a row from index {index} cannot be decoded; is the image "
                           f"folder still there? (last: image {record.image_id}, {_describe(record.image)})")

    def __getitem__(self, index: int) -> dict:
        record, image = self._decode(index)
        annotations = record.annotations
        if self.transforms is not None:
            image, annotations = augment(self.transforms, image, annotations)
        encoded = self.processor(images=image, annotations={"image_id": record.image_id, "annotations": annotations},
                                 do_resize=self.resize_in_processor, do_pad=False, return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"][0], "labels": dict(encoded["labels"][0])}


def _describe(image) -> str:
    if isinstance(image, dict):
        return image.get("path") or "bytes in a datasets table"
    return str(image)
