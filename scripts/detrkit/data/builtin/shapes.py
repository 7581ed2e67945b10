"""Built-in detection data: coloured shapes drawn from a seed and written out in COCO format.

Two sets with disjoint classes, so that moving from one to the other needs a new class head:

* ``shapes-a`` ("pretraining"): 6 shapes x 2 colour families = 12 classes on light, cluttered backgrounds,
  with colour jitter, striped/noisy textures and many small objects (COCO "small" = area < 32^2).
* ``shapes-b`` ("custom"): 5 other shapes in any bright colour on dark gradient backgrounds.

Everything is written the way user data arrives (PNG images + ``instances_<split>.json`` with bbox, area,
iscrowd, category_id and RLE instance masks), so the built-in data travels the same loading path as
user data. Each image is drawn (``shape_drawing.py``) from its own generator seeded by (seed, split, index):
deterministic per seed and independent of how many images are requested.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .shape_drawing import STYLES, draw_image, shape_style

__all__ = ["BUILTIN_DATASETS", "SPLITS", "BuiltinDataset", "builtin_categories", "write_builtin_dataset"]

SPLITS = ("train", "val")
BUILTIN_DATASETS = tuple(STYLES)


def builtin_categories(name: str) -> list[dict]:
    """COCO ``categories`` of a built-in set: ids 1..N in a fixed order."""
    style = shape_style(name)
    return [{"id": i + 1, "name": cls_name, "supercategory": "shape"} for i, (cls_name, _, _) in
            enumerate(style.classes)]


@dataclass(frozen=True)
class BuiltinDataset:
    """Paths of a written built-in set. ``splits[split] = (image_dir, annotation_file)``."""

    name: str
    root: Path
    splits: dict[str, tuple[Path, Path]]
    categories: list[dict]

    @property
    def id2label(self) -> dict[int, str]:
        """Contiguous label id -> class name (the order the loaders use: categories sorted by COCO id)."""
        return {i: c["name"] for i, c in enumerate(sorted(self.categories, key=lambda c: c["id"]))}


def write_builtin_dataset(name: str, root: str | Path, num_train: int = 512, num_val: int = 128,
                          image_size: int = 128, seed: int = 0, overwrite: bool = False) -> BuiltinDataset:
    """Generate built-in set ``name`` ("shapes-a" or "shapes-b") into ``root`` in COCO layout::

        root/train/000000.png ...   root/annotations/instances_train.json
        root/val/000000.png ...     root/annotations/instances_val.json

    If ``root`` already holds this set with the same parameters it is reused unless ``overwrite``.
    """
    shape_style(name)  # fail early on a bad name
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    root = Path(root)
    params = {"name": name, "num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed}
    splits = {s: (root / s, root / "annotations" / f"instances_{s}.json") for s in SPLITS}
    result = BuiltinDataset(name, root, splits, builtin_categories(name))
    meta_file = root / "builtin.json"
    if not overwrite and meta_file.exists() and json.loads(meta_file.read_text()) == params:
        if all(ann.exists() for _, ann in splits.values()):
            return result

    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        image_dir, ann_file = splits[split]
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            pixels, objects = draw_image(name, image_size, rng)
            file_name = f"{i:06d}.png"
            Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
            images.append({"id": i, "file_name": file_name, "width": image_size, "height": image_size})
            for cls, mask in objects:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i, "category_id": cls + 1,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
                    "iscrowd": 0, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                })
        coco = {"info": {"description": f"detrkit built-in {name} ({split})", **params},
                "images": images, "annotations": annotations, "categories": result.categories}
        ann_file.write_text(json.dumps(coco))
    meta_file.write_text(json.dumps(params))
    return result
