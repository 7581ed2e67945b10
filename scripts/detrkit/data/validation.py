"""Checking raw records before anything is dropped, then keeping or refusing them as ``on_error`` says.

Every record is looked at (missing file, unreadable image header, size mismatch, missing field, box outside the
image / negative size / NaN, unknown category, duplicate id); then either one error lists all problems
(``on_error="raise"``) or the bad images are skipped, counted and logged with their reasons (``on_error="skip"``).
An image with a bad box is skipped as a whole: keeping it without that box would teach the model to call a real
object background. Images are checked by their header only (``check_images="header"``): decoding every image up
front costs minutes at COCO size, and a file that is truncated past its header is reported and skipped when the
data loader reads it (see ``dataset.py``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from .images import CheckImages, image_size
from .problems import InvalidDatasetError, Problem
from .record_table import PackedSegmentation, pack_segmentation
from .records import Categories, DetectionData, DetectionRecord

__all__ = ["BOX_TOLERANCE", "CheckedRecords", "OnError", "check_on_error", "check_records", "finish"]

logger = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]
# Boxes may overshoot the image by rounding; within this many pixels they are clipped, beyond it reported.
BOX_TOLERANCE = 1.0


def _check_box(bbox: Any, width: int, height: int) -> list[float] | str:
    """A clean [x, y, w, h] inside the image, or what is wrong with ``bbox``."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return f"bbox {bbox!r} is not 4 numbers [x, y, w, h]"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"bbox {[x, y, w, h]} has NaN or infinite values"
    if w <= 0 or h <= 0:
        return f"bbox {[x, y, w, h]} has negative or zero size"
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
        return f"bbox {[x, y, w, h]} (x, y, w, h) lies outside the {width}x{height} image"
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    return [x0, y0, x1 - x0, y1 - y0]


def _annotation(obj: dict, k: int, image_id: int, box: list[float], label: int) -> dict:
    ann = {"id": obj.get("id", k), "image_id": image_id, "bbox": box, "category_id": label,
           "area": float(obj["area"]) if obj.get("area") is not None else box[2] * box[3],
           "iscrowd": int(obj.get("iscrowd") or 0)}
    if obj.get("segmentation") is not None:
        segmentation = obj["segmentation"]  # compact from here on, until the table
        ann["segmentation"] = segmentation if isinstance(segmentation, PackedSegmentation) else \
            pack_segmentation(segmentation)
    return ann


def _check_record(image_id, image, width, height, objects: list[dict], category_of: dict, check: CheckImages,
                  category_key: str):
    """Validate one raw record. ``objects`` carry ``bbox`` [x, y, w, h] and under ``category_key`` a class name or
    original id, looked up in ``category_of``. Returns (DetectionRecord or None, list of problem messages)."""
    problems = []
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        return None, [f"image id {image_id!r} is not an integer"]
    size = image_size(image, check) if check != "none" else None
    if isinstance(size, str):
        problems.append(size)
    elif size is not None:
        if width is not None and height is not None and (int(width), int(height)) != size:
            problems.append(f"declared size {width}x{height} differs from the image's {size[0]}x{size[1]}")
        width, height = size
    elif width is None or height is None:
        problems.append("no width/height given and images are not checked (check_images='none')")
    annotations = []
    for k, obj in enumerate(objects):
        name = f"annotation {obj.get('id', k)}"
        missing = [key for key in ("bbox", category_key) if obj.get(key) is None]
        if missing:
            problems.append(f"{name}: missing field(s) {missing}")
            continue
        category = obj[category_key]
        label = category_of.get(category) if isinstance(category, (str, int)) else None
        if label is None:
            problems.append(f"{name}: unknown category {category!r}")
        box = _check_box(obj["bbox"], width, height) if width is not None and height is not None else None
        if isinstance(box, str):
            problems.append(f"{name}: {box}")
        if label is None or not isinstance(box, list):
            continue
        annotations.append(_annotation(obj, k, image_id, box, label))
    if problems:
        return None, problems
    return DetectionRecord(image_id, image, int(width), int(height), annotations), []


@dataclass
class CheckedRecords:
    """What validation found, before ``on_error`` decides: the good records and every problem."""

    records: Sequence[DetectionRecord]
    categories: Categories
    problems: list[Problem]
    num_entries: int
    source: str
    layout: str = ""


def check_records(raw: Iterable[tuple], categories: Categories, category_of: dict, source: str,
                  check: CheckImages, num_entries: int, early: Iterable[Problem] = (), category_key: str = "category",
                  layout: str = "") -> CheckedRecords:
    """Check every raw record (image_id, image, width, height, objects). ``early`` holds problems the loader
    found while reading its ``num_entries`` image entries."""
    records, problems, seen = [], list(early), set()
    for image_id, image, width, height, objects in raw:
        if image_id in seen:
            problems.append(Problem(image_id, "duplicate image id"))
            continue
        seen.add(image_id)
        record, messages = _check_record(image_id, image, width, height, objects, category_of, check, category_key)
        problems.extend(Problem(image_id, m) for m in messages)
        if record is not None:
            records.append(record)
    return CheckedRecords(records, categories, problems, num_entries, source, layout)


def check_on_error(on_error: str) -> None:
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")


def finish(checked: CheckedRecords, on_error: OnError, records: Sequence[DetectionRecord] | None = None,
           cache_file: Path | None = None) -> DetectionData:
    """Raise with every problem (``on_error="raise"``) or log them and keep the good records."""
    problems, num_entries = checked.problems, checked.num_entries
    if problems and on_error == "raise":
        raise InvalidDatasetError(checked.source, problems, num_entries)
    records = checked.records if records is None else records
    data = DetectionData(records, checked.categories, problems, checked.source,
                         num_skipped=num_entries - len(records), layout=checked.layout, cache_file=cache_file)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... {len(problems) - 20} more in DetectionData.problems" if len(problems) > 20 else ""
        logger.warning("%s: left out %d of %d images (%d problems):\n%s%s",
                       checked.source, data.num_skipped, num_entries, len(problems), lines, more)
    return data
