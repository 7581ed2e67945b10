"""Detection data in one common form: :class:`DetectionRecord` per image, :class:`Categories`, :class:`DetectionData`.

Every reader (``coco.py``, ``hf_datasets.py``, ``imagefolder.py``, ``yolo.py``, ``voc.py``; ``layouts.py`` finds the
layout) turns its source into a :class:`DetectionData`: records + categories + the problems found. Each record's
annotations are COCO-style dicts (``bbox`` = absolute [x, y, w, h]) with ``category_id`` already mapped to a
contiguous label id 0..N-1: COCO category ids may be sparse, the model's class head is not. :class:`Categories`
keeps the data's own ids and names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .problems import BoxReport, Problem

__all__ = ["Categories", "DetectionData", "DetectionRecord"]


@dataclass(frozen=True)
class Categories:
    """Class names of a data set, indexed by contiguous label id, with the original (COCO) id of each."""

    names: tuple[str, ...]
    original_ids: tuple[int, ...]

    def __post_init__(self):
        if len(self.names) != len(self.original_ids):
            raise ValueError("Categories needs one original id per name")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate category names: {sorted(n for n in self.names if self.names.count(n) > 1)}")

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "Categories":
        names = tuple(names)
        return cls(names, tuple(range(len(names))))

    @classmethod
    def from_coco(cls, categories: list[dict]) -> "Categories":
        """From a COCO ``categories`` list; labels follow the order of the COCO ids."""
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(str(c["name"]) for c in ordered), tuple(int(c["id"]) for c in ordered))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def to_original_id(self, label: int) -> int:
        """Contiguous label -> the data set's own category id (to write results against the original json)."""
        return self.original_ids[label]

    def to_coco(self) -> list[dict]:
        """COCO ``categories`` in label space (id = contiguous label), as the metric uses them."""
        return [{"id": i, "name": name} for i, name in enumerate(self.names)]

    def to_original_coco(self) -> list[dict]:
        """COCO ``categories`` with the data's own ids (to write results or files the source's tools read)."""
        return [{"id": i, "name": name} for i, name in zip(self.original_ids, self.names)]

    @property
    def original_id2label(self) -> dict[int, int]:
        """The data's own category id -> contiguous label."""
        return {original: label for label, original in enumerate(self.original_ids)}


@dataclass
class DetectionRecord:
    """One image: a reference to its pixels plus COCO-style annotations in label space.

    ``image`` is a path, a PIL image, or a ``{"bytes", "path"}`` dict as ``datasets`` stores images.
    Each annotation has ``bbox`` [x, y, w, h] (absolute pixels), ``category_id`` (contiguous label id),
    ``area``, ``iscrowd`` and ``id``; a ``segmentation`` is kept when the source has one.
    """

    image_id: int
    image: Any
    width: int
    height: int
    annotations: list[dict] = field(default_factory=list)

    def target(self) -> dict:
        """The annotation dict image processors take: ``{"image_id", "annotations"}``."""
        return {"image_id": self.image_id, "annotations": self.annotations}


@dataclass
class DetectionData:
    """Validated records of one split, their categories, and the problems that made records be skipped."""

    records: Sequence[DetectionRecord]  # a RecordTable (Arrow-backed, shared between processes) or a list
    categories: Categories
    problems: list[Problem] = field(default_factory=list)
    source: str = ""
    num_skipped: int = 0  # images of the source left out because of the problems
    layout: str = ""  # "coco", "yolo", "voc", "imagefolder", "datasets"
    cache_file: Path | None = None  # the Arrow cache the records are mapped from, if any
    boxes: BoxReport = field(default_factory=BoxReport)  # boxes of the kept images clipped or dropped by the rule

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> DetectionRecord:
        return self.records[index]

    @property
    def id2label(self) -> dict[int, str]:
        return self.categories.id2label

    @property
    def label2id(self) -> dict[str, int]:
        return self.categories.label2id
