"""COCO panoptic folders -> validated records, and a torch Dataset that encodes them with the image processor.

Layout (COCO's own and the built-in panoptic sets')::

    root/annotations/panoptic_<split>.json    images, annotations {image_id, file_name, segments_info}, categories
    root/annotations/panoptic_<split>/        the PNGs named by file_name (segment id = R + 256 G + 256^2 B)
    root/<split>/ or root/<split>2017/        the images

Records are checked when loading (every annotation's image and PNG exist, categories are known, ids unique);
the maps themselves are checked against segments_info when an item is encoded, by the processor.
Class labels are contiguous (categories sorted by id), as the detection loaders number them; `label2category`
maps them back for evaluation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

__all__ = ["PanopticData", "PanopticDataset", "PanopticRecord", "load_coco_panoptic"]


@dataclass(frozen=True)
class PanopticRecord:
    image_id: int
    image: Path
    panoptic_png: Path
    segments_info: list[dict]
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class PanopticData:
    records: list[PanopticRecord]
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
    :class:`~detrkit.processing.collator.DetectionCollator` pads a list of them (masks included)."""

    def __init__(self, data: PanopticData, processor, do_resize: bool = True):
        self.data = data
        self.processor = processor
        self.do_resize = do_resize
        self._to_label = data.category2label

    def __len__(self) -> int:
        return len(self.data.records)

    def __getitem__(self, index: int) -> dict:
        record = self.data.records[index]
        with Image.open(record.image) as image:
            image = image.convert("RGB")
        segments = [dict(s, category_id=self._to_label[int(s["category_id"])]) for s in record.segments_info]
        annotation = {"image_id": record.image_id, "file_name": record.panoptic_png.name, "segments_info": segments}
        encoded = self.processor(images=image, annotations=annotation, format="coco_panoptic",
                                 masks_path=record.panoptic_png.parent, do_resize=self.do_resize, do_pad=False,
                                 return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"][0], "labels": dict(encoded["labels"][0])}
