"""Panoptic data from a ``datasets`` table (:func:`load_hf_panoptic`).

A panoptic map column (RGB-encoded PNG, or integer ids) with a segments_info column, or a semantic map column
(class id per pixel; each class present becomes one segment, :func:`semantic_map_to_panoptic`). Rows are read when
indexed; the images stay in the table.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detrkit.processing.segmentation_annotations import SegmentationAnnotationError, read_panoptic_map

from .panoptic_records import InvalidPanopticDataError, PanopticData, PanopticRecord

__all__ = ["HFPanopticRecords", "load_hf_panoptic", "semantic_map_to_panoptic"]


def semantic_map_to_panoptic(semantic_map, ignore_index: int | None = 255) -> tuple[np.ndarray, list[dict]]:
    """A semantic map (H, W) of class ids -> (segment ids (H, W), segments_info): each class present is one
    segment, id = class + 1 (0 stays VOID, as do pixels of `ignore_index`), category_id = the class id."""
    classes = np.asarray(semantic_map)
    if classes.ndim != 2 or not np.issubdtype(classes.dtype, np.integer):
        raise SegmentationAnnotationError(
            f"a semantic map must be (H, W) integer class ids, got shape {classes.shape} of {classes.dtype}"
        )
    classes = classes.astype(np.int64)
    valid = classes != ignore_index if ignore_index is not None else np.ones(classes.shape, bool)
    ids = np.where(valid, classes + 1, 0)
    present, counts = np.unique(classes[valid], return_counts=True)
    return ids, [{"id": int(c) + 1, "category_id": int(c), "iscrowd": 0, "area": int(n)}
                 for c, n in zip(present, counts)]


class HFPanopticRecords(Sequence):
    """The rows of a `datasets` table as PanopticRecords, read when indexed (images stay in the table)."""

    def __init__(self, dataset, image_column: str, map_column: str, segments_column: str | None,
                 ignore_index: int | None):
        self.dataset = dataset
        self.columns = image_column, map_column, segments_column
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> PanopticRecord:
        row = self.dataset[int(index)]
        image_column, map_column, segments_column = self.columns
        image_id = int(row.get("image_id", index))
        if segments_column is None:
            ids, segments = semantic_map_to_panoptic(np.asarray(row[map_column]), self.ignore_index)
        else:
            ids, segments = row[map_column], row[segments_column]
        return PanopticRecord(image_id, row[image_column], ids, segments)


def load_hf_panoptic(dataset, categories: list[dict], image_column: str = "image", map_column: str = "label",
                     segments_column: str | None = "segments_info", ignore_index: int | None = 255) -> PanopticData:
    """A `datasets` table -> PanopticData. With `segments_column` (e.g. "segments_info"), `map_column` holds
    panoptic maps (RGB-encoded PNG images, or integer id arrays); with `segments_column=None` it holds semantic
    maps, each class present becoming one segment (category_id = class id, `ignore_index` pixels VOID).
    `categories`: [{"id", "name", "isthing"}] covering every category_id that occurs."""
    columns = set(dataset.column_names)
    for column in (image_column, map_column, segments_column):
        if column is not None and column not in columns:
            raise InvalidPanopticDataError(f"the dataset has no column {column!r}; columns: {sorted(columns)}")
    if segments_column is not None and map_column in columns:
        read_panoptic_map(np.asarray(dataset[0][map_column]), "row 0")  # fail early on a non-RGB / non-id map
    return PanopticData(HFPanopticRecords(dataset, image_column, map_column, segments_column, ignore_index),
                        sorted(categories, key=lambda c: c["id"]), f"datasets table ({len(dataset)} rows)")
