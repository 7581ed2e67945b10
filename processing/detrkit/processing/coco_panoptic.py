"""COCO panoptic folders -> validated records, and a torch Dataset that encodes them with the image processor.

Layout (COCO's own and the built-in panoptic sets')::

    root/annotations/panoptic_<split>.json    images, annotations {image_id, file_name, segments_info}, categories
    root/annotations/panoptic_<split>/        the PNGs named by file_name (segment id = R + 256 G + 256^2 B)
    root/<split>/ or root/<split>2017/        the images

`load_hf_panoptic` reads a `datasets` table instead: a panoptic map column (RGB-encoded PNG, or integer ids) with a
segments_info column, or a semantic map column (class id per pixel; each class present becomes one segment).

Records are checked when loading (every annotation's image and PNG exist, categories are known, ids unique);
the maps themselves are checked against segments_info when an item is encoded, by the processor.
Class labels are contiguous (categories sorted by id), as the detection loaders number them; `label2category`
maps them back for evaluation.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .segmentation_annotations import SegmentationAnnotationError, read_panoptic_map

__all__ = ["PanopticData", "PanopticDataset", "PanopticRecord", "horizontal_flip", "load_coco_panoptic",
           "load_hf_panoptic", "semantic_map_to_panoptic"]


@dataclass(frozen=True)
class PanopticRecord:
    """One image. `image` and `panoptic_png` are paths, or (from `datasets`) PIL images / arrays."""

    image_id: int
    image: Any
    panoptic_png: Any
    segments_info: list[dict]
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class PanopticData:
    records: Sequence[PanopticRecord]
    categories: list[dict]  # COCO panoptic categories, sorted by id, each with isthing
    source: str

    def __len__(self) -> int:
        return len(self.records)

    @property
    def id2label(self) -> dict[int, str]:
        return {i: c["name"] for i, c in enumerate(self.categories)}

    @property
    def label2category(self) -> dict[int, int]:
        return {i: int(c["id"]) for i, c in enumerate(self.categories)}

    @property
    def category2label(self) -> dict[int, int]:
        return {int(c["id"]): i for i, c in enumerate(self.categories)}

    @property
    def stuff_label_ids(self) -> set[int]:
        """Labels of the stuff classes (isthing 0): post-processing's `label_ids_to_fuse`."""
        return {i for i, c in enumerate(self.categories) if not c.get("isthing", 1)}


class InvalidPanopticDataError(ValueError):
    """A COCO panoptic folder that cannot be used; the message lists the first problems by image id."""


def _find(candidates: list[Path], what: str) -> Path:
    for path in candidates:
        if path.exists():
            return path
    raise InvalidPanopticDataError(f"no {what}: looked for " + ", ".join(str(p) for p in candidates))


def load_coco_panoptic(root: str | Path, split: str = "train", annotation_file=None, image_dir=None,
                       masks_dir=None) -> PanopticData:
    """Load and check a COCO panoptic split; paths not given follow the layout in the module docstring."""
    root = Path(root)
    annotation_file = Path(annotation_file) if annotation_file else _find(
        [root / "annotations" / f"panoptic_{split}.json", root / "annotations" / f"panoptic_{split}2017.json"],
        f"panoptic annotation file for split {split!r}")
    masks_dir = Path(masks_dir) if masks_dir else _find(
        [annotation_file.with_suffix(""), root / f"panoptic_{split}", root / f"panoptic_{split}2017"],
        f"folder of panoptic PNGs for {annotation_file.name}")
    image_dir = Path(image_dir) if image_dir else _find([root / split, root / f"{split}2017", root / "images"],
                                                         f"image folder for split {split!r}")
    coco = json.loads(annotation_file.read_text())
    for key in ("annotations", "categories"):
        if key not in coco:
            raise InvalidPanopticDataError(f"{annotation_file}: no {key!r}; is this a COCO panoptic file?")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    known = {int(c["id"]) for c in categories}
    images = {int(i["id"]): i for i in coco.get("images", [])}

    problems, records = [], []
    for annotation in coco["annotations"]:
        image_id = int(annotation["image_id"])
        info = images.get(image_id, {})
        png = masks_dir / annotation["file_name"]
        image = image_dir / info.get("file_name", Path(annotation["file_name"]).with_suffix(".jpg").name)
        ids = [int(s["id"]) for s in annotation["segments_info"]]
        unknown = sorted({int(s["category_id"]) for s in annotation["segments_info"]} - known)
        if not image.exists():
            problems.append(f"image {image_id}: image file not found: {image}")
        elif not png.exists():
            problems.append(f"image {image_id}: panoptic PNG not found: {png}")
        elif unknown:
            problems.append(f"image {image_id}: unknown category_id {unknown[0]}")
        elif len(set(ids)) != len(ids):
            problems.append(f"image {image_id}: a segment id appears twice in segments_info")
        else:
            records.append(PanopticRecord(image_id, image, png, annotation["segments_info"], info.get("width"),
                                          info.get("height")))
    if problems:
        raise InvalidPanopticDataError(
            f"{annotation_file}: {len(problems)} of {len(coco['annotations'])} annotations unusable:\n  "
            + "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else ""))
    return PanopticData(records, categories, str(annotation_file))


class PanopticDataset(torch.utils.data.Dataset):
    """Items ``{"pixel_values": (3, H, W), "labels": dict}`` with the processor's panoptic labels: ``masks``
    (N, H, W) bool, ``boxes`` (from the masks), ``class_labels`` (contiguous), ``iscrowd``, ``area``, ...;
    :class:`~detrkit.processing.collator.DetectionCollator` pads a list of them (masks included).

    ``augment(image, id_map, rng) -> (image, id_map)`` (e.g. :func:`horizontal_flip`) transforms the PIL image and
    its (H, W) segment-id map together before encoding; ``rng`` is drawn from (seed, epoch, index), so an item is
    the same in every run (``set_epoch`` moves to the next epoch's draws). Segments an augmentation removes
    entirely are dropped, and areas are counted on the augmented map.
    """

    def __init__(self, data: PanopticData, processor, do_resize: bool = True, augment=None, seed: int = 0):
        self.data = data
        self.processor = processor
        self.do_resize = do_resize
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._to_label = data.category2label

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data.records)

    def __getitem__(self, index: int) -> dict:
        record = self.data.records[index]
        if isinstance(record.image, (str, Path)):
            with Image.open(record.image) as image:
                image = image.convert("RGB")
        else:
            image = record.image.convert("RGB") if isinstance(record.image, Image.Image) else record.image
        segments = [dict(s, category_id=self._to_label[int(s["category_id"])]) for s in record.segments_info]
        annotation = {"image_id": record.image_id, "segments_info": segments}
        if self.augment is not None:
            id_map = read_panoptic_map(record.panoptic_png, f"image {record.image_id}")
            image, id_map = self.augment(image, id_map, np.random.default_rng([self.seed, self.epoch, index]))
            present = set(np.unique(id_map).tolist())
            annotation["segments_info"] = [{k: v for k, v in s.items() if k != "area"} for s in segments
                                           if int(s["id"]) in present]
            annotation["panoptic_map"], masks_path = id_map, None
        elif isinstance(record.panoptic_png, (str, Path)):
            annotation["file_name"] = Path(record.panoptic_png).name
            masks_path = Path(record.panoptic_png).parent
        else:
            annotation["panoptic_map"], masks_path = record.panoptic_png, None
        encoded = self.processor(images=image, annotations=annotation, format="coco_panoptic",
                                 masks_path=masks_path, do_resize=self.do_resize, do_pad=False,
                                 return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"][0], "labels": dict(encoded["labels"][0])}


def horizontal_flip(probability: float = 0.5):
    """An `augment` for PanopticDataset: mirror image and map left-right with `probability`."""
    def flip(image, id_map, rng):
        if rng.random() < probability:
            return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), np.ascontiguousarray(id_map[:, ::-1])
        return image, id_map
    return flip


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
