"""YOLO layout: ``data.yaml`` (``names``, ``train``/``val``/``test``) + images + one ``.txt`` label file per image.

Each label line is ``class cx cy w h`` normalized to the image size (a line with more numbers is an ultralytics
polygon ``class x1 y1 x2 y2 ...``, boxed by its extent). As in ultralytics, an image's label file is found by
replacing the last ``images`` folder of its path with ``labels`` and its extension with ``.txt``; an image
without a label file has no objects. Both the ultralytics layout (``images/train``, ``labels/train``) and the
Roboflow export (``train/images``, ``train/labels``, split paths written as ``../train/images``) load.
Labels keep the data's class indices, which are also the original category ids.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from .cache import listing_digest, load_cached
from .images import check_mode, image_size
from .problems import InvalidDatasetError, Problem
from .records import Categories, DetectionData
from .validation import CheckedRecords, OnError, check_records

__all__ = ["IMAGE_EXTENSIONS", "find_yolo_yaml", "load_yolo", "yolo_splits"]

IMAGE_EXTENSIONS = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}
NORMALIZED_TOLERANCE = 1e-3  # exporters round; ultralytics itself accepts coordinates up to 1 as well
SPLIT_KEYS = ("train", "val", "test")


def find_yolo_yaml(folder: Path) -> Path | None:
    """``data.yaml`` / ``dataset.yaml``, or the only ``*.yaml`` with ``names`` in ``folder``."""
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        if (folder / name).is_file():
            return folder / name
    candidates = [p for p in sorted(folder.glob("*.y*ml")) if "names" in (_read_yaml(p, quiet=True) or {})]
    return candidates[0] if len(candidates) == 1 else None


def _read_yaml(path: Path, quiet: bool = False) -> dict | None:
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        if quiet:
            return None
        raise InvalidDatasetError(str(path), [Problem("-", f"cannot read the YAML file ({err})")], 0) from err
    if not isinstance(content, dict):
        if quiet:
            return None
        raise InvalidDatasetError(str(path), [Problem("-", "the file is not a YAML mapping")], 0)
    return content


def _names(config: dict, source: str) -> list[str]:
    names = config.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            keys = None
        if keys is None or keys != list(range(len(keys))):
            raise InvalidDatasetError(source, [Problem("-", f"'names' keys must be the class indices 0..N-1, got "
                                                            f"{list(names)}")], 0)
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names:
        raise InvalidDatasetError(source, [Problem("-", "no 'names' list of class names")], 0)
    if config.get("nc") is not None and config["nc"] != len(names):
        raise InvalidDatasetError(source, [Problem("-", f"'nc' is {config['nc']} but 'names' has {len(names)}")], 0)
    return [str(n) for n in names]


def _resolve(root: Path, entry: str, yaml_dir: Path) -> Path:
    path = Path(entry)
    if path.is_absolute():
        return path
    resolved = root / path
    if not resolved.exists() and entry.startswith("../"):
        # Roboflow writes "../train/images" for a folder beside the yaml
        stripped = yaml_dir / Path(*[part for part in path.parts if part != ".."])
        if stripped.exists():
            return stripped
    return resolved


def yolo_splits(yaml_path: Path) -> dict[str, list[Path]]:
    """Split name -> image folders or list files, as the yaml names them (missing paths included)."""
    config = _read_yaml(yaml_path)
    root = yaml_path.parent
    if config.get("path"):
        root = _resolve(root, str(config["path"]), yaml_path.parent)
        if not root.is_dir():
            root = yaml_path.parent  # a 'path' of the machine that wrote the file; the yaml's folder is the root
    splits = {}
    for key in SPLIT_KEYS:
        entries = config.get(key)
        if entries:
            entries = entries if isinstance(entries, list) else [entries]
            splits[key] = [_resolve(root, str(e), yaml_path.parent) for e in entries]
    return splits


def _image_files(entry: Path, source: str) -> list[Path]:
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if entry.is_file() and entry.suffix == ".txt":  # a list of image paths, relative to the list's folder
        lines = [line.strip() for line in entry.read_text().splitlines() if line.strip()]
        return [entry.parent / line if not Path(line).is_absolute() else Path(line) for line in lines]
    raise InvalidDatasetError(source, [Problem("-", f"image folder or list not found: {entry}")], 0)


def label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the extension ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _parse_line(line: str, num_classes: int, width: int, height: int) -> dict | str:
    values = line.split()
    try:
        numbers = [float(v) for v in values[1:]]
        cls = int(values[0])
    except ValueError:
        return f"{line!r} is not 'class cx cy w h' numbers"
    if len(numbers) < 4 or (len(numbers) > 4 and (len(numbers) % 2 or len(numbers) < 6)):
        return f"{line!r} has {len(numbers)} coordinates (4 for a box, an even number >= 6 for a polygon)"
    if len(numbers) > 4 and not all(math.isfinite(v) for v in numbers):  # a box's NaN: the box rule names it
        return f"{line!r} has NaN or infinite values"
    if any(v < -NORMALIZED_TOLERANCE or v > 1 + NORMALIZED_TOLERANCE for v in numbers):
        return f"{line!r}: coordinates must be normalized to [0, 1]"
    if not 0 <= cls < num_classes:
        return f"{line!r}: class {cls} is not in data.yaml's {num_classes} names"
    if len(numbers) == 4:
        cx, cy, w, h = numbers
        x0, y0 = cx - w / 2, cy - h / 2
    else:
        xs, ys = numbers[0::2], numbers[1::2]
        x0, y0, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return {"bbox": [x0 * width, y0 * height, w * width, h * height], "category_id": cls}


def _read_labels(path: Path, num_classes: int, width: int, height: int) -> tuple[list[dict], list[str]]:
    if not path.is_file():
        return [], []  # an image without a label file shows background only
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        return [], [f"cannot read {path} ({err})"]
    objects, problems = [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            parsed = _parse_line(line.strip(), num_classes, width, height)
            if isinstance(parsed, str):
                problems.append(f"{path} line {line_no}: {parsed}")
            else:
                objects.append({**parsed, "id": line_no})
    return objects, problems


def _check_yolo(yaml_path: Path, split: str, images: list[Path], names: list[str], check) -> CheckedRecords:
    source = f"{yaml_path} ({split})"
    categories = Categories(tuple(names), tuple(range(len(names))))
    early, raw = [], []
    for image_id, image in enumerate(images):
        size = image_size(image, "decode" if check == "decode" else "header")  # the size is needed for the boxes
        if isinstance(size, str):
            early.append(Problem(image_id, f"{image}: {size}"))
            continue
        objects, problems = _read_labels(label_path(image), len(names), *size)
        if problems:
            early.extend(Problem(image_id, p) for p in problems)
            continue
        raw.append((image_id, str(image), *size, objects))
    checked = check_records(raw, categories, {i: i for i in range(len(names))}, source, "none", len(images),
                            early, "category_id", "yolo")
    return checked


def load_yolo(yaml_path: str | Path, split: str = "train", on_error: OnError = "raise",
              check_images: bool | str = "header", cache_dir=None) -> DetectionData:
    """Load split ``split`` (``train``, ``val`` or ``test``, as keyed in the yaml) of a YOLO data set."""
    yaml_path = Path(yaml_path)
    names = _names(_read_yaml(yaml_path), str(yaml_path))
    splits = yolo_splits(yaml_path)
    if split not in splits:
        raise InvalidDatasetError(str(yaml_path), [Problem("-", f"no '{split}' entry (has: {', '.join(splits)})")], 0)
    images = [image for entry in splits[split] for image in _image_files(entry, str(yaml_path))]
    check = check_mode(check_images)
    label_dirs = {label_path(image).parent for image in images}
    files = [yaml_path, *splits[split], *sorted(d for d in label_dirs if d.is_dir())]
    labels = sorted(entry.path for d in label_dirs if d.is_dir() for entry in os.scandir(d))
    options = {"split": split, "check": check, "label_files": listing_digest(labels)}
    return load_cached("yolo", files, options, lambda: _check_yolo(yaml_path, split, images, names, check),
                       on_error, cache_dir)

