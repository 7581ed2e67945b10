"""The imagefolder layout: images beside a ``metadata.jsonl`` of their objects (:func:`load_imagefolder`)."""
from __future__ import annotations

import json
from pathlib import Path

from .cache import load_cached
from .images import CheckImages, check_mode
from .objects_column import box_converter, check_object_rows
from .problems import InvalidDatasetError, Problem
from .records import DetectionData
from .validation import CheckedRecords, OnError

__all__ = ["load_imagefolder"]


def _check_imagefolder(folder: Path, class_names, bbox_format: str, check: CheckImages) -> CheckedRecords:
    early, rows = [], []
    metadata = folder / "metadata.jsonl"
    for line_no, line in enumerate(metadata.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)
        except json.JSONDecodeError as err:
            early.append(Problem(f"line {line_no}", f"invalid JSON in metadata.jsonl ({err})"))
            continue
        image_id = meta.get("image_id", line_no - 1)
        if not meta.get("file_name"):
            early.append(Problem(image_id, "missing field 'file_name'"))
            continue
        if "objects" not in meta:
            early.append(Problem(image_id, "missing field 'objects'"))
            continue
        rows.append((image_id, str(folder / meta["file_name"]), meta.get("width"), meta.get("height"),
                     meta["objects"]))
    return check_object_rows(rows, class_names, bbox_format, str(folder), check, len(rows) + len(early), early,
                                "imagefolder")


def load_imagefolder(folder: str | Path, class_names: list[str] | None = None, bbox_format: str = "xywh",
                     on_error: OnError = "raise", check_images: bool | str = "header", cache_dir=None) -> DetectionData:
    """Load an imagefolder with ``metadata.jsonl`` (the ``datasets`` imagefolder layout for detection):
    one JSON object per line with ``file_name`` and ``objects: {bbox: [[x, y, w, h], ...], category: [...]}``
    (``categories`` is accepted too), optionally ``image_id``, ``width`` and ``height``.

    Read directly rather than through ``datasets.load_dataset("imagefolder")`` so that a missing or broken
    file is reported with its record instead of failing the whole load."""
    folder = Path(folder)
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        raise InvalidDatasetError(str(folder), [Problem("-", "no metadata.jsonl in the folder")], 0)
    check = check_mode(check_images)
    box_converter(bbox_format)
    options = {"class_names": class_names, "bbox_format": bbox_format, "check": check}
    return load_cached("imagefolder", [metadata], options,
                       lambda: _check_imagefolder(folder, class_names, bbox_format, check), on_error, cache_dir)
