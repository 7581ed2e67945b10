"""Detection data sets in one common form, checked record by record.

Three layouts load into a :class:`DetectionData` (records + categories + the problems found):

* a COCO folder or file: ``images`` + ``instances.json`` (:func:`load_coco`);
* a ``datasets`` Dataset with an ``objects`` column, the cppe-5 Hub layout: ``image``, ``image_id``, ``width``,
  ``height``, ``objects: {id, area, bbox, category}`` with names from the ClassLabel (:func:`load_hf_dataset`);
* an imagefolder with ``metadata.jsonl`` lines ``{"file_name": ..., "objects": {"bbox": [...], "category": [...]}}``
  (:func:`load_imagefolder`).

Every record becomes a :class:`DetectionRecord` whose annotations are COCO-style dicts (``bbox`` = absolute
[x, y, w, h]) with ``category_id`` already mapped to a contiguous label id 0..N-1: COCO category ids may be
sparse, the model's class head is not. :class:`Categories` keeps the way back to the original ids.

Validation looks at every record before anything is dropped (missing file, undecodable or truncated image,
size mismatch, missing field, box outside the image / negative size / NaN, unknown category, duplicate id)
and then either raises one error listing all problems (``on_error="raise"``) or skips the bad images, counting
and logging each with its reason (``on_error="skip"``). An image with a bad box is skipped as a whole: keeping
it without that box would teach the model to call a real object background.
"""
from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "Categories", "DetectionData", "DetectionRecord", "InvalidDatasetError", "Problem",
    "load_coco", "load_detection_data", "load_hf_dataset", "load_imagefolder", "open_image",
]

logger = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]
# Boxes may overshoot the image by rounding; within this many pixels they are clipped, beyond it reported.
BOX_TOLERANCE = 1.0
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


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


@dataclass(frozen=True)
class Problem:
    image_id: Any
    message: str

    def __str__(self) -> str:
        return f"image {self.image_id}: {self.message}"


class InvalidDatasetError(ValueError):
    """Raised with ``on_error="raise"``; ``problems`` lists every bad record found, not just the first."""

    def __init__(self, source: str, problems: list[Problem], num_entries: int):
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(
            f"{len(problems)} problem(s) in {source} ({num_entries} images):\n{shown}{more}\n"
            f"Fix the data, or pass on_error='skip' to leave these images out."
        )


@dataclass
class DetectionData:
    """Validated records of one split, their categories, and the problems that made records be skipped."""

    records: list[DetectionRecord]
    categories: Categories
    problems: list[Problem] = field(default_factory=list)
    source: str = ""
    num_skipped: int = 0  # images of the source left out because of the problems

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


# --- images ----------------------------------------------------------------------------------------------------

def _open(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict):  # datasets' undecoded Image: bytes, or a path when the bytes are not stored
        return Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") is not None else Image.open(image["path"])
    return Image.open(image)


def _orientation(img: Image.Image) -> int:
    return img.getexif().get(EXIF_ORIENTATION, 1)


def open_image(image: Any) -> Image.Image:
    """Decode an image reference (path, PIL image, or ``datasets`` ``{"bytes", "path"}`` dict) to upright RGB.

    EXIF orientation is applied, as ``datasets`` and the image processor do, so sizes and boxes refer to the
    image as viewers show it (a file annotated in raw orientation shows up as a size mismatch in validation)."""
    img = _open(image)
    img.load()
    if _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)  # also drops the tag, so nothing downstream turns it again
    return img.convert("RGB") if img.mode != "RGB" else img


def _image_size(image: Any, decode: bool) -> tuple[int, int] | str:
    """(width, height) of an image reference, or the reason it cannot be read. ``decode`` reads all pixels, so
    that a truncated file fails now, with its record, rather than inside a data-loader worker later."""
    if isinstance(image, (str, Path)) and not Path(image).is_file():
        return f"image file not found: {image}"
    try:
        if isinstance(image, Image.Image):
            width, height, orientation = *image.size, _orientation(image)
        else:
            with _open(image) as img:
                if decode:
                    img.load()
                width, height, orientation = *img.size, _orientation(img)
        return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, KeyError, TypeError) as err:
        return f"cannot decode image ({type(err).__name__}: {err})"


# --- validation --------------------------------------------------------------------------------------------------

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


def _check_record(image_id, image, width, height, objects: list[dict], category_of: dict, check_images: bool,
                  category_key: str):
    """Validate one raw record. ``objects`` carry ``bbox`` [x, y, w, h] and under ``category_key`` a class name or
    original id, looked up in ``category_of``. Returns (DetectionRecord or None, list of problem messages)."""
    problems = []
    size = _image_size(image, decode=check_images)
    if isinstance(size, str):
        problems.append(size)
    else:
        if width is not None and height is not None and (int(width), int(height)) != size:
            problems.append(f"declared size {width}x{height} differs from the image's {size[0]}x{size[1]}")
        width, height = size
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
        box = _check_box(obj["bbox"], width, height) if width is not None else None
        if isinstance(box, str):
            problems.append(f"{name}: {box}")
        if label is None or not isinstance(box, list):
            continue
        ann = {"id": obj.get("id", k), "image_id": image_id, "bbox": box, "category_id": label,
               "area": float(obj["area"]) if obj.get("area") is not None else box[2] * box[3],
               "iscrowd": int(obj.get("iscrowd") or 0)}
        if obj.get("segmentation") is not None:
            ann["segmentation"] = obj["segmentation"]
        annotations.append(ann)
    if problems:
        return None, problems
    return DetectionRecord(image_id, image, int(width), int(height), annotations), []


def _validate(raw: Iterable[tuple], categories: Categories, category_of: dict, on_error: OnError, source: str,
              check_images: bool, num_entries: int, early: list[Problem] = (),
              category_key: str = "category") -> DetectionData:
    """Check every raw record (image_id, image, width, height, objects), then raise or skip with a log.
    ``early`` holds problems the loader found while reading its ``num_entries`` image entries."""
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    records, problems, seen = [], list(early), set()
    for image_id, image, width, height, objects in raw:
        if image_id in seen:
            problems.append(Problem(image_id, "duplicate image id"))
            continue
        seen.add(image_id)
        record, messages = _check_record(image_id, image, width, height, objects, category_of, check_images,
                                         category_key)
        problems.extend(Problem(image_id, m) for m in messages)
        if record is not None:
            records.append(record)
    if problems and on_error == "raise":
        raise InvalidDatasetError(source, problems, num_entries)
    data = DetectionData(records, categories, problems, source, num_skipped=num_entries - len(records))
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... {len(problems) - 20} more in DetectionData.problems" if len(problems) > 20 else ""
        logger.warning("%s: left out %d of %d images (%d problems):\n%s%s",
                       source, data.num_skipped, num_entries, len(problems), lines, more)
    return data


# --- loaders -----------------------------------------------------------------------------------------------------

def load_coco(annotation_file: str | Path, image_dir: str | Path | None = None, on_error: OnError = "raise",
              check_images: bool = True) -> DetectionData:
    """Load a COCO instances file; ``image_dir`` defaults to the folder of the json file.

    Category ids may be sparse; labels are assigned in the order of the ids (see :class:`Categories`).
    """
    annotation_file = Path(annotation_file)
    image_dir = Path(image_dir) if image_dir is not None else annotation_file.parent
    source = str(annotation_file)
    try:
        coco = json.loads(annotation_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InvalidDatasetError(source, [Problem("-", f"cannot read the annotation file ({err})")], 0) from err
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise InvalidDatasetError(source, [Problem("-", f"the file has no '{key}' list")], 0)
    categories = Categories.from_coco(coco["categories"])
    category_of = {coco_id: label for label, coco_id in enumerate(categories.original_ids)}

    early, by_image = [], {}
    image_ids = {img.get("id") for img in coco["images"]}
    for ann in coco["annotations"]:
        if ann.get("image_id") not in image_ids:
            early.append(Problem(ann.get("image_id"), f"annotation {ann.get('id')} refers to an image id missing "
                                                      f"from 'images'"))
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    raw = []
    for index, img in enumerate(coco["images"]):
        if img.get("id") is None or not img.get("file_name"):
            early.append(Problem(img.get("id", f"#{index}"), "image entry lacks 'id' or 'file_name'"))
            continue
        raw.append((img["id"], image_dir / img["file_name"], img.get("width"), img.get("height"),
                    by_image.get(img["id"], [])))
    return _validate(raw, categories, category_of, on_error, source, check_images, len(coco["images"]), early,
                     "category_id")


def _class_label_names(features) -> list[str] | None:
    """Names of the ClassLabel under ``objects.category`` (any nesting ``datasets`` uses), if there is one."""
    objects = features.get("objects") if features is not None else None
    while objects is not None and not isinstance(objects, dict):
        objects = getattr(objects, "feature", None)  # List/Sequence of a struct
    if objects is None:
        return None
    feature = objects.get("category", objects.get("categories"))
    while feature is not None and not hasattr(feature, "names"):
        feature = getattr(feature, "feature", None)
    return list(feature.names) if feature is not None else None


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


def _box_converter(bbox_format: str):
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


def _load_objects_table(rows: Iterable[tuple], class_names: list[str] | None, bbox_format: str, on_error: OnError,
                        source: str, check_images: bool, num_entries: int, early: list[Problem]) -> DetectionData:
    """Shared by the ``datasets`` and imagefolder loaders: rows of (image_id, image, width, height, objects)."""
    to_xywh = _box_converter(bbox_format)
    parsed = []
    for image_id, image, width, height, objects in rows:
        objs = _objects_to_list(objects)
        if isinstance(objs, str):
            early.append(Problem(image_id, objs))
            continue
        parsed.append((image_id, image, width, height, [{**o, "bbox": to_xywh(o.get("bbox"))} for o in objs]))
    values = [o.get("category") for row in parsed for o in row[4] if o.get("category") is not None]
    categories, lookup = _categories_from_values(values, class_names)
    return _validate(parsed, categories, lookup, on_error, source, check_images, num_entries, early)


def load_hf_dataset(dataset, class_names: list[str] | None = None, bbox_format: str = "xywh",
                    on_error: OnError = "raise", check_images: bool = True) -> DetectionData:
    """Load a ``datasets.Dataset`` in the cppe-5 layout (``image``, ``image_id``, ``width``, ``height``,
    ``objects: {id, area, bbox, category}``). Class names come from the ClassLabel of ``objects.category``,
    else from ``class_names``, else from the category values themselves."""
    import datasets

    missing = [c for c in ("image", "objects") if c not in dataset.column_names]
    if missing:
        raise InvalidDatasetError("datasets.Dataset", [Problem("-", f"missing column(s) {missing}; expected "
                                                                     f"'image' and 'objects'")], len(dataset))
    class_names = class_names or _class_label_names(dataset.features)
    if isinstance(dataset.features["image"], datasets.Image):
        # Keep the encoded bytes, not decoded pixels: records stay small and a broken image is reported here.
        dataset = dataset.cast_column("image", datasets.Image(decode=False))

    def rows():
        for index, row in enumerate(dataset):
            yield row.get("image_id", index), row["image"], row.get("width"), row.get("height"), row["objects"]

    return _load_objects_table(rows(), class_names, bbox_format, on_error, "datasets.Dataset", check_images,
                               len(dataset), [])


def load_imagefolder(folder: str | Path, class_names: list[str] | None = None, bbox_format: str = "xywh",
                     on_error: OnError = "raise", check_images: bool = True) -> DetectionData:
    """Load an imagefolder with ``metadata.jsonl`` (the ``datasets`` imagefolder layout for detection):
    one JSON object per line with ``file_name`` and ``objects: {bbox: [[x, y, w, h], ...], category: [...]}``
    (``categories`` is accepted too), optionally ``image_id``, ``width`` and ``height``.

    Read directly rather than through ``datasets.load_dataset("imagefolder")`` so that a missing or broken
    file is reported with its record instead of failing the whole load."""
    folder = Path(folder)
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        raise InvalidDatasetError(str(folder), [Problem("-", "no metadata.jsonl in the folder")], 0)
    early, rows = [], []
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
        rows.append((image_id, folder / meta["file_name"], meta.get("width"), meta.get("height"), meta["objects"]))
    return _load_objects_table(rows, class_names, bbox_format, on_error, str(folder), check_images,
                               len(rows) + len(early), early)


def load_detection_data(source, split: str = "train", on_error: OnError = "raise", **kwargs) -> DetectionData:
    """Load one split from whatever ``source`` is: a ``datasets`` Dataset or DatasetDict, a COCO json file, a folder
    with ``annotations/instances_<split>.json`` (images in ``<split>/``, the COCO layout), a folder with
    ``metadata.jsonl`` (or ``<split>/metadata.jsonl``), or a folder (or its ``<split>/``) holding a single COCO
    ``*.json`` next to its images (the Roboflow export layout). ``kwargs`` go to the loader."""
    import datasets

    if isinstance(source, datasets.DatasetDict):
        return load_hf_dataset(source[split], on_error=on_error, **kwargs)
    if isinstance(source, datasets.Dataset):
        return load_hf_dataset(source, on_error=on_error, **kwargs)
    path = Path(source)
    if path.is_file() and path.suffix == ".json":
        return load_coco(path, on_error=on_error, **kwargs)
    coco_file = path / "annotations" / f"instances_{split}.json"
    if coco_file.is_file():
        return load_coco(coco_file, path / split, on_error=on_error, **kwargs)
    for folder in (path / split, path):
        if (folder / "metadata.jsonl").is_file():
            return load_imagefolder(folder, on_error=on_error, **kwargs)
    for folder in (path / split, path):
        jsons = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if len(jsons) == 1:
            return load_coco(jsons[0], on_error=on_error, **kwargs)
    raise FileNotFoundError(
        f"cannot tell the layout of {str(source)!r} for split {split!r}: expected a COCO json file, "
        f"annotations/instances_{split}.json, metadata.jsonl, a folder with one COCO json, or a datasets Dataset")
