"""The ``objects`` column shared by the ``datasets`` and imagefolder layouts: boxes and categories per image.

``objects`` is a dict of columns (``{"bbox": [...], "category": [...], ...}``) or a list of per-object structs;
categories are class names or ids, named by a ClassLabel, by ``class_names``, or by the values themselves.
"""
from __future__ import annotations

from typing import Any, Iterable

from .images import CheckImages
from .problems import Problem
from .records import Categories
from .validation import CheckedRecords, check_records

__all__ = ["box_converter", "check_object_rows"]


def _objects_to_list(objects: Any) -> list[dict] | str:
    """``objects`` as a list of per-object dicts, from a dict of columns or a list of structs."""
    if objects is None:
        return []
    if isinstance(objects, list):
        return [dict(o) for o in objects]
    if not isinstance(objects, dict) or "bbox" not in objects:
        return "field 'objects' must be a dict with 'bbox' and 'category' lists"
    objects = dict(objects)
    if "category" not in objects and "categories" in objects:
        objects["category"] = objects.pop("categories")
    columns = {k: list(v) for k, v in objects.items() if v is not None}
    n = len(columns["bbox"])
    bad = [k for k, v in columns.items() if len(v) != n]
    if bad:
        return f"objects columns {bad} do not have one entry per bbox ({n})"
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def box_converter(bbox_format: str):
    if bbox_format == "xywh":
        return lambda b: b
    if bbox_format == "xyxy":
        return lambda b: [b[0], b[1], b[2] - b[0], b[3] - b[1]] if b is not None and len(b) == 4 else b
    raise ValueError(f"bbox_format must be 'xywh' (COCO) or 'xyxy', got {bbox_format!r}")


def _categories_from_values(values: list, class_names: list[str] | None):
    """Categories + lookup when the data carries raw names or ids rather than a ClassLabel."""
    if class_names is not None:
        categories = Categories.from_names(class_names)
        lookup = {**{name: i for i, name in enumerate(class_names)}, **{i: i for i in range(len(class_names))}}
        return categories, lookup
    if all(isinstance(v, str) for v in values):
        names = sorted(set(values))
        return Categories.from_names(names), {name: i for i, name in enumerate(names)}
    ids = sorted({v for v in values if isinstance(v, int) and not isinstance(v, bool)})
    return Categories(tuple(str(i) for i in ids), tuple(ids)), {v: i for i, v in enumerate(ids)}


def check_object_rows(rows: Iterable[tuple], class_names: list[str] | None, bbox_format: str, source: str,
                         check: CheckImages, num_entries: int, early: list[Problem], layout: str) -> CheckedRecords:
    """Shared by the ``datasets`` and imagefolder loaders: rows of (image_id, image, width, height, objects)."""
    to_xywh = box_converter(bbox_format)
    parsed = []
    for image_id, image, width, height, objects in rows:
        objs = _objects_to_list(objects)
        if isinstance(objs, str):
            early.append(Problem(image_id, objs))
            continue
        parsed.append((image_id, image, width, height, [{**o, "bbox": to_xywh(o.get("bbox"))} for o in objs]))
    values = [o.get("category") for row in parsed for o in row[4] if o.get("category") is not None]
    categories, lookup = _categories_from_values(values, class_names)
    return check_records(parsed, categories, lookup, source, check, num_entries, early, layout=layout)
