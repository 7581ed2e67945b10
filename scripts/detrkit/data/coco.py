"""The COCO layout: an instances json file and its image folder (:func:`load_coco`).

Category ids may be sparse; labels follow the order of the ids (see :class:`~detrkit.data.records.Categories`).
Polygons are packed while the json is decoded (``json_stream.py``): at COCO size the parsed polygons would add up
to gigabytes of Python floats.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from .cache import load_cached
from .images import CheckImages, check_mode
from .json_stream import load_json_transformed
from .problems import InvalidDatasetError, Problem
from .record_table import pack_segmentation
from .records import Categories, DetectionData
from .validation import CheckedRecords, OnError, check_records

try:  # faster than the json module on small files (a COCO file is read by json_stream.py)
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

__all__ = ["load_coco", "read_json"]


def read_json(path: Path, transforms: dict[str, Callable[[Any], Any]] | None = None) -> Any:
    """Parse a JSON file, with the elements of the top-level arrays named in ``transforms`` passed through its
    functions as they are decoded (see ``json_stream.py``); a file that is not valid JSON raises
    ``InvalidDatasetError`` naming it."""
    try:
        if transforms:
            return load_json_transformed(path, transforms)
        raw = path.read_bytes()
        if orjson is not None:
            try:
                return orjson.loads(raw)
            except ValueError:
                pass  # e.g. NaN, which Python's json writes and reads: the box check then names it
        return json.loads(raw)
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidDatasetError(str(path), [Problem("-", f"cannot read the annotation file ({err})")], 0) from err


def _packed(annotation: Any) -> Any:
    """An annotation with its polygons packed (applied while the json is decoded: at COCO size the parsed polygons
    would add up to gigabytes of Python floats)."""
    if isinstance(annotation, dict) and annotation.get("segmentation") is not None:
        annotation["segmentation"] = pack_segmentation(annotation["segmentation"])
    return annotation


def _coco_categories(coco: dict, source: str) -> Categories:
    bad = [c for c in coco["categories"] if not isinstance(c, dict) or not isinstance(c.get("id"), int)
           or c.get("name") is None]
    if bad:
        raise InvalidDatasetError(source, [Problem("-", f"category entry {bad[0]!r} needs an integer 'id' and a "
                                                        f"'name'")], 0)
    ids = [c["id"] for c in coco["categories"]]
    if len(set(ids)) != len(ids):
        raise InvalidDatasetError(source, [Problem("-", f"duplicate category ids {sorted({i for i in ids if ids.count(i) > 1})}")], 0)
    try:
        return Categories.from_coco(coco["categories"])
    except ValueError as err:
        raise InvalidDatasetError(source, [Problem("-", str(err))], 0) from None


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _check_coco(annotation_file: Path, image_dir: Path, check: CheckImages) -> CheckedRecords:
    source = str(annotation_file)
    coco = read_json(annotation_file, {"annotations": _packed})
    if not isinstance(coco, dict):
        raise InvalidDatasetError(source, [Problem("-", "the file is not a COCO json object")], 0)
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise InvalidDatasetError(source, [Problem("-", f"the file has no '{key}' list")], 0)
    categories = _coco_categories(coco, source)
    category_of = categories.original_id2label

    early, by_image = [], {}
    images = coco.pop("images")
    image_ids = {img.get("id") for img in images if isinstance(img, dict) and _is_id(img.get("id"))}
    for ann in coco.pop("annotations"):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not _is_id(image_id) or image_id not in image_ids:
            what = f"annotation {ann.get('id')}" if isinstance(ann, dict) else f"annotation entry {ann!r}"
            early.append(Problem(image_id if _is_id(image_id) else "-",
                                 f"{what} refers to an image id missing from 'images' ({image_id!r})"))
            continue
        by_image.setdefault(image_id, []).append(ann)
    folder = str(image_dir)

    def raw():
        for index, img in enumerate(images):
            if not isinstance(img, dict) or not _is_id(img.get("id")) or not isinstance(img.get("file_name"), str):
                image_id = img.get("id") if isinstance(img, dict) and _is_id(img.get("id")) else f"#{index}"
                early.append(Problem(image_id, "image entry lacks an 'id' or a 'file_name'"))
                continue
            # popped as checked, so the parsed annotations are freed as the records are built
            yield (img["id"], os.path.join(folder, img["file_name"]), img.get("width"), img.get("height"),
                   by_image.pop(img["id"], []))

    checked = check_records(raw(), categories, category_of, source, check, len(images), (), "category_id", "coco")
    checked.problems[:0] = early  # the entry problems first, as the file lists them
    return checked


def load_coco(annotation_file: str | Path, image_dir: str | Path | None = None, on_error: OnError = "raise",
              check_images: bool | str = "header", cache_dir=None) -> DetectionData:
    """Load a COCO instances file; ``image_dir`` defaults to the folder of the json file.

    Category ids may be sparse; labels are assigned in the order of the ids (see :class:`Categories`).
    ``cache_dir`` as in :func:`records_cache_dir`.
    """
    annotation_file = Path(annotation_file)
    image_dir = Path(image_dir) if image_dir is not None else annotation_file.parent
    check = check_mode(check_images)
    if not annotation_file.is_file():
        raise InvalidDatasetError(str(annotation_file), [Problem("-", "annotation file not found")], 0)
    if not image_dir.is_dir():
        raise InvalidDatasetError(str(annotation_file), [Problem("-", f"image folder not found: {image_dir}")], 0)
    options = {"image_dir": str(image_dir.resolve()), "check": check}
    return load_cached("coco", [annotation_file], options, lambda: _check_coco(annotation_file, image_dir, check),
                       on_error, cache_dir)
