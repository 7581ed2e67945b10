"""Panoptic data in one common form: a :class:`PanopticRecord` per image and the categories of the set.

Class labels are contiguous (categories sorted by id), as the detection readers number them; ``label2category``
maps them back for evaluation. Readers: ``coco_panoptic.py`` (COCO panoptic folders), ``hf_panoptic.py``
(``datasets`` tables); ``panoptic_dataset.py`` encodes the records with the image processor.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["InvalidPanopticDataError", "PanopticData", "PanopticRecord"]


@dataclass(frozen=True)
class PanopticRecord:
    """One image. `image` and `panoptic_png` are paths, or (from `datasets`) PIL images / arrays."""

    image_id: int
    image: Any
    panoptic_png: Any
    segments_info: list[dict]
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class PanopticData:
    records: Sequence[PanopticRecord]
    categories: list[dict]  # COCO panoptic categories, sorted by id, each with isthing
    source: str

    def __len__(self) -> int:
        return len(self.records)

    @property
    def id2label(self) -> dict[int, str]:
        return {i: c["name"] for i, c in enumerate(self.categories)}

    @property
    def label2category(self) -> dict[int, int]:
        return {i: int(c["id"]) for i, c in enumerate(self.categories)}

    @property
    def category2label(self) -> dict[int, int]:
        return {int(c["id"]): i for i, c in enumerate(self.categories)}

    @property
    def stuff_label_ids(self) -> set[int]:
        """Labels of the stuff classes (isthing 0): post-processing's `label_ids_to_fuse`."""
        return {i for i, c in enumerate(self.categories) if not c.get("isthing", 1)}


class InvalidPanopticDataError(ValueError):
    """A COCO panoptic folder that cannot be used; the message lists the first problems by image id."""
