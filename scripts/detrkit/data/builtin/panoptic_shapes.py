"""Built-in panoptic data: the shapes sets' objects as things on backgrounds made of stuff regions.

``shapes-b-panoptic`` (and ``shapes-a-panoptic``) draw the objects of shapes-b (shapes-a) over two or three
horizontal bands with wavy borders, each one of three stuff classes with its own texture: "sky" (a pale blue
gradient), "wall" (bricks) and "ground" (grainy green-brown). The detection sets shapes-a / shapes-b are left as
they were: these are separate sets, drawn from their own seeds.

Everything is written in COCO panoptic format, the way user data arrives::

    root/train/000000.png ...                  the images
    root/annotations/panoptic_train.json       images, annotations (file_name, segments_info), categories (isthing)
    root/annotations/panoptic_train/000000.png segment ids as RGB (id = R + 256 G + 256^2 B), 0 = VOID

so the built-in data travels the loader and processor that user data does.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from detrkit.processing.segmentation_annotations import id_to_rgb

from .shape_drawing import REFERENCE_SIZE, draw_objects, hsv, shape_style
from .shapes import SPLITS

__all__ = ["BUILTIN_PANOPTIC_DATASETS", "BuiltinPanopticDataset", "builtin_panoptic_categories",
           "draw_panoptic_image", "write_builtin_panoptic_dataset"]

STUFF = ("sky", "wall", "ground")  # top to bottom when present
BUILTIN_PANOPTIC_DATASETS = ("shapes-b-panoptic", "shapes-a-panoptic")
MIN_STUFF_AREA = 16  # smaller leftovers of a band (between objects) become VOID rather than a segment


def _things_style(name: str):
    if name not in BUILTIN_PANOPTIC_DATASETS:
        raise ValueError(f"unknown built-in panoptic dataset {name!r}; choose one of {list(BUILTIN_PANOPTIC_DATASETS)}")
    return shape_style(name.removesuffix("-panoptic"))


def builtin_panoptic_categories(name: str) -> list[dict]:
    """COCO panoptic ``categories``: the base set's shapes (isthing 1, ids 1..T), then the stuff (isthing 0)."""
    things = [c for c, _, _ in _things_style(name).classes]
    return ([{"id": i + 1, "name": n, "supercategory": "shape", "isthing": 1} for i, n in enumerate(things)]
            + [{"id": len(things) + i + 1, "name": n, "supercategory": "background", "isthing": 0}
               for i, n in enumerate(STUFF)])


def _stuff_texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A full-image (size, size, 3) float texture of one stuff class; the band mask cuts it out."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    scale = size / REFERENCE_SIZE
    if kind == "sky":
        top = hsv(rng.uniform(0.55, 0.62), rng.uniform(0.35, 0.55), rng.uniform(0.85, 1.0))
        bottom = hsv(rng.uniform(0.52, 0.6), rng.uniform(0.1, 0.25), rng.uniform(0.9, 1.0))
        t = (yy / size)[..., None]
        img = (1 - t) * top + t * bottom
        return img + rng.normal(0, 0.015, img.shape).astype(np.float32)
    if kind == "wall":
        brick = hsv(rng.uniform(-0.02, 0.07), rng.uniform(0.35, 0.65), rng.uniform(0.45, 0.7))
        mortar = hsv(rng.uniform(0.05, 0.12), rng.uniform(0.05, 0.15), rng.uniform(0.75, 0.9))
        height = scale * rng.uniform(6, 10)
        width = height * rng.uniform(1.8, 2.6)
        row = np.floor(yy / height)
        shifted = xx + (row % 2) * width / 2
        joint = ((yy % height) < 1.2 * scale) | ((shifted % width) < 1.2 * scale)
        img = np.where(joint[..., None], mortar, brick)
        return img + rng.normal(0, 0.03, img.shape).astype(np.float32)
    base = hsv(rng.uniform(0.08, 0.3), rng.uniform(0.45, 0.8), rng.uniform(0.3, 0.5))
    img = np.broadcast_to(base, (size, size, 3)).copy()
    return img + rng.normal(0, 0.08, img.shape).astype(np.float32)


def _bands(size: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Two or three stuff classes as horizontal bands with wavy borders: [(class, bool mask)], top first."""
    kinds = [STUFF[i] for i in sorted(rng.choice(3, size=int(rng.integers(2, 4)), replace=False))]
    xx = np.arange(size, dtype=np.float32)
    cuts = np.sort(rng.uniform(0.25, 0.75, len(kinds) - 1)) * size
    yy = np.arange(size, dtype=np.float32)[:, None]
    below = np.zeros((size, size), dtype=int)  # how many borders lie above each pixel
    for cut in cuts:
        amplitude, period = rng.uniform(0, 0.06) * size, rng.uniform(0.4, 1.2) * size
        border = cut + amplitude * np.sin(2 * math.pi * xx / period + rng.uniform(0, 2 * math.pi))
        below += yy >= border[None, :]
    return [(kind, below == i) for i, kind in enumerate(kinds)]


def draw_panoptic_image(name: str, size: int, rng: np.random.Generator, max_overlap: float = 0.15):
    """One image: (HxWx3 uint8, (H, W) int64 segment ids, segments_info). Things first, then stuff."""
    style = _things_style(name)
    categories = builtin_panoptic_categories(name)
    stuff_id = {c["name"]: c["id"] for c in categories if not c["isthing"]}
    img = np.zeros((size, size, 3), np.float32)
    bands = _bands(size, rng)
    for kind, mask in bands:
        img[mask] = _stuff_texture(kind, size, rng)[mask]
    pixels, objects = draw_objects(style, img, size, rng, max_overlap)

    ids = np.zeros((size, size), np.int64)
    segments = []
    for category, mask in objects:
        segments.append({"id": len(segments) + 1, "category_id": category + 1, "iscrowd": 0})
        ids[mask] = segments[-1]["id"]
    for kind, mask in bands:
        mask = mask & (ids == 0)
        if mask.sum() >= MIN_STUFF_AREA:
            segments.append({"id": len(segments) + 1, "category_id": stuff_id[kind], "iscrowd": 0})
            ids[mask] = segments[-1]["id"]
    for segment in segments:
        ys, xs = np.nonzero(ids == segment["id"])
        segment["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        segment["area"] = int(len(ys))
    return pixels, ids, segments


@dataclass(frozen=True)
class BuiltinPanopticDataset:
    """Paths of a written set: ``splits[split] = (image_dir, panoptic_json, panoptic_png_dir)``."""

    name: str
    root: Path
    splits: dict[str, tuple[Path, Path, Path]]
    categories: list[dict]

    @property
    def id2label(self) -> dict[int, str]:
        """Contiguous label id -> class name (categories sorted by COCO id, as the loaders order them)."""
        return {i: c["name"] for i, c in enumerate(sorted(self.categories, key=lambda c: c["id"]))}

    @property
    def stuff_label_ids(self) -> set[int]:
        """Contiguous label ids of the stuff classes: post-processing's `label_ids_to_fuse`."""
        ordered = sorted(self.categories, key=lambda c: c["id"])
        return {i for i, c in enumerate(ordered) if not c["isthing"]}


def write_builtin_panoptic_dataset(name: str, root: str | Path, num_train: int = 512, num_val: int = 128,
                                   image_size: int = 128, seed: int = 0,
                                   overwrite: bool = False) -> BuiltinPanopticDataset:
    """Generate ``name`` into ``root`` in COCO panoptic layout (see the module docstring); reused when ``root``
    already holds it with the same parameters, unless ``overwrite``."""
    _things_style(name)
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    root = Path(root)
    params = {"name": name, "num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed}
    splits = {s: (root / s, root / "annotations" / f"panoptic_{s}.json", root / "annotations" / f"panoptic_{s}")
              for s in SPLITS}
    result = BuiltinPanopticDataset(name, root, splits, builtin_panoptic_categories(name))
    meta_file = root / "builtin.json"
    if not overwrite and meta_file.exists() and json.loads(meta_file.read_text()) == params:
        if all(ann.exists() for _, ann, _ in splits.values()):
            return result

    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        image_dir, ann_file, png_dir = splits[split]
        image_dir.mkdir(parents=True, exist_ok=True)
        png_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            # Its own seed stream (the extra 1), so that no image repeats one of the detection sets.
            rng = np.random.default_rng([seed, split_index, i, 1])
            pixels, ids, segments = draw_panoptic_image(name, image_size, rng)
            file_name = f"{i:06d}.png"
            Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
            Image.fromarray(id_to_rgb(ids)).save(png_dir / file_name, compress_level=1)
            images.append({"id": i, "file_name": file_name, "width": image_size, "height": image_size})
            annotations.append({"image_id": i, "file_name": file_name, "segments_info": segments})
        coco = {"info": {"description": f"detrkit built-in {name} ({split})", **params},
                "images": images, "annotations": annotations, "categories": result.categories}
        ann_file.write_text(json.dumps(coco))
    meta_file.write_text(json.dumps(params))
    return result
