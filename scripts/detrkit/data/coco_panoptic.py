"""The COCO panoptic layout -> validated records (:func:`load_coco_panoptic`).

Layout (COCO's own and the built-in panoptic sets')::

    root/annotations/panoptic_<split>.json    images, annotations {image_id, file_name, segments_info}, categories
    root/annotations/panoptic_<split>/        the PNGs named by file_name (segment id = R + 256 G + 256^2 B)
    root/<split>/ or root/<split>2017/        the images

Records are checked when loading (every annotation's image and PNG exist, categories are known, ids unique);
the maps themselves are checked against segments_info when an item is encoded, by the processor.
"""
from __future__ import annotations

import json
from pathlib import Path

from .panoptic_records import InvalidPanopticDataError, PanopticData, PanopticRecord

__all__ = ["load_coco_panoptic"]


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
