"""Pascal VOC layout: ``Annotations/<id>.xml`` + ``JPEGImages/`` + ``ImageSets/Main/<split>.txt`` (one id a line).

Boxes are VOC's 1-based inclusive pixel corners; they become COCO [x, y, w, h] as detectron2 reads them
(``xmin - 1``, ``ymin - 1``, right and bottom kept). ``difficult`` objects become ``iscrowd`` ones, which
training leaves out and the COCO metric ignores, as VOC's own evaluation does. Class names are VOC's 20 in
their usual order when the data uses only those, else the sorted names of all annotation files (so that every
split of a folder has the same labels); the label index is also the category's original id.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from .cache import listing_digest, load_cached
from .images import check_mode
from .problems import InvalidDatasetError, Problem
from .records import Categories, DetectionData
from .validation import CheckedRecords, OnError, check_records

__all__ = ["VOC_CLASSES", "find_voc_root", "load_voc", "voc_splits"]

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def find_voc_root(folder: Path) -> Path | None:
    """``folder`` itself, or the single ``VOCdevkit/VOC*`` (or ``VOC*``) folder inside it, holding Annotations/."""
    if (folder / "Annotations").is_dir():
        return folder
    nested = [p for pattern in ("VOCdevkit/VOC*", "VOC*") for p in sorted(folder.glob(pattern))
              if (p / "Annotations").is_dir()]
    return nested[0] if len(nested) == 1 else None


def voc_splits(root: Path) -> list[str]:
    """Split lists of ImageSets/Main; per-class lists (``cat_train.txt`` beside ``train.txt``) are not splits."""
    main = root / "ImageSets" / "Main"
    stems = {p.stem for p in main.glob("*.txt")} if main.is_dir() else set()
    return sorted(s for s in stems if not ("_" in s and s.rsplit("_", 1)[1] in stems))


def _text(node, path: str):
    found = node.find(path)
    return found.text.strip() if found is not None and found.text is not None else None


def _parse(xml_file: Path) -> dict | str:
    """filename, width, height and objects (name, difficult, bbox) of one annotation file, or what is wrong."""
    try:
        root = ElementTree.parse(xml_file).getroot()
    except (OSError, ElementTree.ParseError) as err:
        return f"cannot read {xml_file} ({err})"
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name, corners = _text(obj, "name"), [_text(obj, f"bndbox/{c}") for c in ("xmin", "ymin", "xmax", "ymax")]
        if name is None or None in corners:
            return f"{xml_file}: object {k} lacks 'name' or a 'bndbox' corner"
        try:
            xmin, ymin, xmax, ymax = (float(c) for c in corners)
        except ValueError:
            return f"{xml_file}: object {k} has a non-numeric bndbox {corners}"
        objects.append({"id": k, "category": name, "iscrowd": int(_text(obj, "difficult") == "1"),
                        "bbox": [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]})
    try:
        width, height = int(float(_text(root, "size/width"))), int(float(_text(root, "size/height")))
    except (TypeError, ValueError):
        width = height = None  # then the image's own size is used
    return {"filename": _text(root, "filename"), "width": width or None, "height": height or None,
            "objects": objects}


def _categories(parsed: dict) -> Categories:
    names = {o["category"] for entry in parsed.values() if isinstance(entry, dict) for o in entry["objects"]}
    ordered = VOC_CLASSES if names <= set(VOC_CLASSES) else tuple(sorted(names))
    return Categories(tuple(ordered), tuple(range(len(ordered))))


def _check_voc(root: Path, split: str, check) -> CheckedRecords:
    source = f"{root} ({split})"
    ids = [line.split()[0] for line in (root / "ImageSets" / "Main" / f"{split}.txt").read_text().splitlines()
           if line.strip()]
    stems = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    image_id_of = {stem: i for i, stem in enumerate(stems)}  # one numbering for all splits of the folder
    parsed = {stem: _parse(root / "Annotations" / f"{stem}.xml") for stem in stems}
    categories = _categories(parsed)
    early, raw = [], []
    for name in ids:
        entry = parsed.get(name)
        if entry is None:
            early.append(Problem(name, f"listed in {split}.txt but Annotations/{name}.xml does not exist"))
        elif isinstance(entry, str):
            early.append(Problem(image_id_of[name], entry))
        else:
            image = root / "JPEGImages" / (entry["filename"] or f"{name}.jpg")
            if not image.is_file() and (root / "JPEGImages" / f"{name}.jpg").is_file():
                image = root / "JPEGImages" / f"{name}.jpg"  # some exporters write another file name
            raw.append((image_id_of[name], str(image), entry["width"], entry["height"], entry["objects"]))
    return check_records(raw, categories, categories.label2id, source, check, len(ids), early, "category", "voc")


def load_voc(root: str | Path, split: str = "train", on_error: OnError = "raise", check_images: bool | str = "header",
             cache_dir=None) -> DetectionData:
    """Load split ``split`` (a file of ImageSets/Main) of a Pascal VOC folder."""
    root = Path(root)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise InvalidDatasetError(str(root), [Problem("-", f"no split list {split_file} (splits: "
                                                           f"{', '.join(voc_splits(root)) or 'none'})")], 0)
    if not (root / "JPEGImages").is_dir():
        raise InvalidDatasetError(str(root), [Problem("-", f"image folder not found: {root / 'JPEGImages'}")], 0)
    check = check_mode(check_images)
    annotations = sorted(entry.path for entry in os.scandir(root / "Annotations"))
    options = {"split": split, "check": check, "annotation_files": listing_digest(annotations)}
    return load_cached("voc", [split_file, root / "Annotations", root / "JPEGImages"], options,
                       lambda: _check_voc(root, split, check), on_error, cache_dir)
