"""Which layout a data source has, which splits it holds, and loading one of them.

A source is a path (a COCO json file, or a folder in one of the layouts below), a ``datasets`` Dataset or
DatasetDict (``hf_datasets.py``), a ``save_to_disk`` folder, or a Hub dataset id (``owner/name`` or a bare
``name``). :func:`load_detection_data` hands a split to the reader of its layout. Folders:

* COCO (``coco.py``): ``annotations/instances_<split>.json`` with images in ``<split>/`` (or ``images/<split>/``);
  the json beside the split folder (``instances_<split>.json`` or ``<split>.json`` next to ``<split>/``);
  Roboflow's ``<split>/_annotations.coco.json`` (or any single json in ``<split>/``);
* YOLO: ``data.yaml`` with ``names`` and split paths (``yolo.py``); the yaml file itself is a source too;
* Pascal VOC: ``Annotations/`` + ``JPEGImages/`` + ``ImageSets/Main/<split>.txt`` (``voc.py``);
* imagefolder (``imagefolder.py``): ``<split>/metadata.jsonl`` or ``metadata.jsonl``.

Split names are matched through their usual spellings (``val`` finds ``valid``, ``validation``, ``val2017``), and
an error for a missing split lists the splits there are. A source with a single set of records (a json file, a
folder with one ``metadata.jsonl``, a lone ``Dataset``) serves it for any split name.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .coco import load_coco
from .hf_datasets import load_hf_dataset
from .imagefolder import load_imagefolder
from .records import DetectionData
from .validation import OnError
from .voc import find_voc_root, load_voc, voc_splits
from .yolo import find_yolo_yaml, load_yolo, yolo_splits

__all__ = ["ANY_SPLIT", "SPLIT_ALIASES", "SplitNotFoundError", "SplitSource", "discover_splits", "load_detection_data",
           "open_source", "split_names"]

SPLIT_ALIASES = (
    ("train", "train2017", "training"),
    ("val", "valid", "validation", "val2017", "eval", "dev"),
    ("test", "test2017", "testing"),
)
ANY_SPLIT = "*"  # the key of a source's only set of records
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class SplitNotFoundError(FileNotFoundError):
    """The source has no such split; the message lists those it has."""


@dataclass(frozen=True)
class SplitSource:
    """One split of a source: its layout, what it is read from, and how to load it."""

    layout: str
    where: str
    load: Callable[..., DetectionData]  # (on_error, **loader kwargs) -> DetectionData


def split_names(split: str) -> list[str]:
    """``split`` first, then the other spellings of the same split."""
    for group in SPLIT_ALIASES:
        if split.lower() in group:
            return [split, *(name for name in group if name != split)]
    return [split]


def _coco(annotation_file: Path, image_dir: Path) -> SplitSource:
    return SplitSource("coco", str(annotation_file),
                       lambda on_error, **kw: load_coco(annotation_file, image_dir, on_error=on_error, **kw))


def _coco_image_dir(root: Path, split: str) -> Path:
    for candidate in (root / split, root / "images" / split, root / "images"):
        if candidate.is_dir():
            return candidate
    return root / split  # missing: load_coco names it in its error


def _coco_splits(root: Path) -> dict[str, SplitSource]:
    splits = {}
    annotations = root / "annotations"
    for pattern in ("instances_*.json", "*.json"):
        for file in sorted(annotations.glob(pattern)) if annotations.is_dir() else []:
            split = file.stem.removeprefix("instances_")
            splits.setdefault(split, _coco(file, _coco_image_dir(root, split)))
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in splits):
        beside = [root / f"instances_{folder.name}.json", root / f"{folder.name}.json"]
        inside = sorted(folder.glob("*.json"))
        roboflow = folder / "_annotations.coco.json"
        if any(f.is_file() for f in beside):
            splits.setdefault(folder.name, _coco(next(f for f in beside if f.is_file()), folder))
        elif roboflow.is_file() or len(inside) == 1:
            file = roboflow if roboflow.is_file() else inside[0]
            images = folder / "images" if (folder / "images").is_dir() and not any(
                p.suffix.lower() in (".jpg", ".jpeg", ".png") for p in folder.iterdir()) else folder
            splits.setdefault(folder.name, _coco(file, images))
    return splits


def _imagefolder(folder: Path) -> SplitSource:
    return SplitSource("imagefolder", str(folder / "metadata.jsonl"),
                       lambda on_error, **kw: load_imagefolder(folder, on_error=on_error, **kw))


def _hf(dataset, where: str) -> SplitSource:
    return SplitSource("datasets", where, lambda on_error, **kw: load_hf_dataset(dataset, on_error=on_error, **kw))


def _yolo_splits(yaml_file: Path) -> dict[str, SplitSource]:
    return {split: SplitSource("yolo", str(yaml_file), lambda on_error, split=split, **kw:
                               load_yolo(yaml_file, split, on_error=on_error, **kw))
            for split in yolo_splits(yaml_file)}


def _folder_splits(root: Path) -> dict[str, SplitSource]:
    yaml_file = find_yolo_yaml(root)
    if yaml_file is not None:
        return _yolo_splits(yaml_file)
    voc_root = find_voc_root(root)
    if voc_root is not None:
        return {split: SplitSource("voc", str(voc_root), lambda on_error, split=split, **kw:
                                   load_voc(voc_root, split, on_error=on_error, **kw))
                for split in voc_splits(voc_root)}
    splits = {p.name: _imagefolder(p) for p in sorted(root.iterdir()) if (p / "metadata.jsonl").is_file()}
    for split, source in _coco_splits(root).items():
        splits.setdefault(split, source)
    if not splits and (root / "metadata.jsonl").is_file():
        splits[ANY_SPLIT] = _imagefolder(root)
    if not splits:
        jsons = sorted(root.glob("*.json"))
        if len(jsons) == 1:
            splits[ANY_SPLIT] = _coco(jsons[0], root)
    return splits


def _is_datasets_object(source) -> bool:
    # without importing datasets (a second of start-up) when nothing has: then no object can be one of its own
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(source, (datasets.Dataset, datasets.DatasetDict))


def open_source(source) -> Any:
    """A path, or the ``datasets`` object a ``save_to_disk`` folder or Hub id holds (loaded once, here)."""
    if _is_datasets_object(source):
        return source
    path = Path(source).expanduser()
    if path.exists():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            import datasets

            return datasets.load_from_disk(str(path))
        return path
    name = str(source)
    if not HUB_ID.match(name):
        raise FileNotFoundError(f"data source {name!r}: no such file or folder")
    import datasets

    try:
        return datasets.load_dataset(name)
    except Exception as err:  # offline, unknown name, gated...: say both readings of the name
        raise FileNotFoundError(f"data source {name!r}: no such file or folder, and loading it as a Hub dataset "
                                f"failed ({type(err).__name__}: {err})") from err


def discover_splits(source) -> dict[str, SplitSource]:
    """Every split the source holds, by its own name (``ANY_SPLIT`` for a source with one set of records)."""
    source = open_source(source)
    if _is_datasets_object(source):
        if hasattr(source, "items"):  # a DatasetDict
            return {split: _hf(dataset, f"datasets split {split!r}") for split, dataset in source.items()}
        return {ANY_SPLIT: _hf(source, "datasets.Dataset")}
    if source.is_file():
        if source.suffix in (".yaml", ".yml"):  # ultralytics users pass the data.yaml itself
            return _yolo_splits(source)
        if source.suffix != ".json":
            raise FileNotFoundError(f"data source {str(source)!r}: a file source must be a COCO .json file or a "
                                    f"YOLO data.yaml")
        return {ANY_SPLIT: _coco(source, source.parent)}
    return _folder_splits(source)


def find_split(splits: dict[str, SplitSource], split: str, source) -> SplitSource:
    if ANY_SPLIT in splits:
        return splits[ANY_SPLIT]
    by_lower = {name.lower(): name for name in splits}
    for name in split_names(split):
        if name.lower() in by_lower:
            return splits[by_lower[name.lower()]]
    if not splits:
        raise FileNotFoundError(
            f"cannot tell the layout of {str(source)!r}: expected a COCO json file or folder "
            f"(annotations/instances_<split>.json, instances_<split>.json beside <split>/, "
            f"<split>/_annotations.coco.json), a YOLO data.yaml, a Pascal VOC folder, metadata.jsonl, "
            f"a datasets save_to_disk folder or a Hub dataset id")
    raise SplitNotFoundError(f"no split {split!r} in {str(source)!r} (splits there: {', '.join(sorted(splits))})")


def load_detection_data(source, split: str = "train", on_error: OnError = "raise", **kwargs) -> DetectionData:
    """Load split ``split`` of ``source`` in whatever layout it has; ``kwargs`` go to the layout's loader
    (``check_images``, ``cache_dir``; ``class_names``, ``bbox_format`` for imagefolder / ``datasets``)."""
    chosen = find_split(discover_splits(source), split, source)
    return chosen.load(on_error, **kwargs)

