"""Checking raw records before anything is dropped, then keeping or refusing them as ``on_error`` says.

Every record is looked at (missing file, unreadable image header, size mismatch, missing field, malformed box:
not 4 numbers / NaN / negative size, unknown category, duplicate id); then either one error lists all problems
(``on_error="raise"``) or the bad images are skipped, counted and logged with their reasons (``on_error="skip"``).
An image with a malformed box is skipped as a whole: keeping it without that box would teach the model to call a
real object background. The boxes of the images kept follow the one box rule of ``detrkit.processing.box_rule``,
the image processor's too: a box crossing the image edge is clipped to it, one of zero size or entirely outside
the image is dropped; :class:`~detrkit.data.problems.BoxReport` counts the first and names the second, and
``detrkit data check`` and training print that same report. Images are checked by their header only
(``check_images="header"``): decoding every image up front costs minutes at COCO size, and a file that is truncated
past its header is reported and skipped when the data loader reads it (see ``dataset.py``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

from .images import CheckImages, image_size
from .problems import BoxReport, InvalidDatasetError, Problem
from .record_table import PackedSegmentation, pack_segmentation
from .records import Categories, DetectionData, DetectionRecord

__all__ = ["CheckedRecords", "OnError", "check_on_error", "check_records", "finish"]

logger = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]


def _apply_rule(rule, parsed: list, image_id, width: int, height: int, report: BoxReport) -> list:
    """(name, box) pairs -> what the box rule keeps: the box as given (inside) or clipped, else None (dropped;
    named in ``report``)."""
    if not parsed:
        return []
    corners, outcome = rule.apply_box_rule([box for _, box in parsed], width, height)
    kept, clipped = [], 0
    for (name, box), (x0, y0, x1, y1), what in zip(parsed, corners.tolist(), outcome.tolist()):
        if what in rule.DROPPED:
            report.dropped.append(Problem(image_id, f"{name}: {rule.dropped_message(what, box, width, height)}"))
            kept.append(None)
        elif what == rule.CLIPPED:
            clipped += 1
            kept.append([x0, y0, x1 - x0, y1 - y0])
        else:
            kept.append(list(box))  # as given: the processor then computes what transformers' would, bit for bit
    report.clipped += clipped
    report.clipped_images += clipped > 0
    return kept


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
                  category_key: str, rule, report: BoxReport):
    """Validate one raw record. ``objects`` carry ``bbox`` [x, y, w, h] and under ``category_key`` a class name or
    original id, looked up in ``category_of``. Returns (DetectionRecord or None, list of problem messages); the
    boxes a kept record's ``rule`` clips or drops go to ``report``."""
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
    parsed, good = [], []
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
        try:
            box = rule.parse_box(obj["bbox"])
        except rule.MalformedBoxError as error:
            problems.append(f"{name}: {error}")
            continue
        if label is not None:
            parsed.append((name, box))
            good.append((k, obj, label))
    if problems:
        return None, problems
    width, height = int(width), int(height)
    boxes = _apply_rule(rule, parsed, image_id, width, height, report)
    annotations = [_annotation(obj, k, image_id, box, label) for (k, obj, label), box in zip(good, boxes)
                   if box is not None]
    return DetectionRecord(image_id, image, width, height, annotations), []


@dataclass
class CheckedRecords:
    """What validation found, before ``on_error`` decides: the good records and every problem."""

    records: Sequence[DetectionRecord]
    categories: Categories
    problems: list[Problem]
    num_entries: int
    source: str
    layout: str = ""
    boxes: BoxReport = field(default_factory=BoxReport)


def check_records(raw: Iterable[tuple], categories: Categories, category_of: dict, source: str,
                  check: CheckImages, num_entries: int, early: Iterable[Problem] = (), category_key: str = "category",
                  layout: str = "") -> CheckedRecords:
    """Check every raw record (image_id, image, width, height, objects). ``early`` holds problems the loader
    found while reading its ``num_entries`` image entries."""
    from detrkit.processing import box_rule  # here, not above: detrkit.processing loads torch (`--help` stays fast)

    records, problems, seen, report = [], list(early), set(), BoxReport()
    for image_id, image, width, height, objects in raw:
        if image_id in seen:
            problems.append(Problem(image_id, "duplicate image id"))
            continue
        seen.add(image_id)
        record, messages = _check_record(image_id, image, width, height, objects, category_of, check, category_key,
                                         box_rule, report)
        problems.extend(Problem(image_id, m) for m in messages)
        if record is not None:
            records.append(record)
    return CheckedRecords(records, categories, problems, num_entries, source, layout, report)


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
                         num_skipped=num_entries - len(records), layout=checked.layout, cache_file=cache_file,
                         boxes=checked.boxes)
    if checked.boxes:
        logger.warning("%s: the box rule:\n%s", checked.source,
                       "\n".join(f"  {line}" for line in checked.boxes.lines()))
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... {len(problems) - 20} more in DetectionData.problems" if len(problems) > 20 else ""
        logger.warning("%s: left out %d of %d images (%d problems):\n%s%s",
                       checked.source, data.num_skipped, num_entries, len(problems), lines, more)
    return data
