"""Built-in detection data: coloured shapes drawn from a seed and written out in COCO format.

Two sets with disjoint classes, so that moving from one to the other needs a new class head:

* ``shapes-a`` ("pretraining"): 6 shapes x 2 colour families = 12 classes on light, cluttered backgrounds,
  with colour jitter, striped/noisy textures and many small objects (COCO "small" = area < 32^2).
* ``shapes-b`` ("custom"): 5 other shapes in any bright colour on dark gradient backgrounds.

Everything is written the way user data arrives (PNG images + ``instances_<split>.json`` with bbox, area,
iscrowd, category_id and RLE instance masks), so the built-in data travels the same loading path as
user data. Each image is drawn from its own generator seeded by (seed, split, index): deterministic per
seed and independent of how many images are requested.
"""
from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

__all__ = ["BUILTIN_DATASETS", "BuiltinDataset", "builtin_categories", "write_builtin_dataset"]

SPLITS = ("train", "val")
# Object diameters are given for a 128 px image and scale with image_size.
REFERENCE_SIZE = 128


# --- shape geometry: polygons around the origin with radius ~1 -------------------------------------------------

def _regular_polygon(n: int, phase: float = 0.0, radius: float = 1.0) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _cross(arm: float = 0.33) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
                     (-1, -a), (-a, -a)], dtype=float)


def _heart(n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # image y points down
    pts = np.stack([x, y], axis=1)
    return (pts - pts.mean(0)) / 17.0


_ARROW = np.array([(-1, -0.28), (0.15, -0.28), (0.15, -0.7), (1, 0), (0.15, 0.7), (0.15, 0.28), (-1, 0.28)])

# A shape is a list of (polygon, value) layers painted into its mask in order (value 0 cuts a hole),
# plus the rotation range in degrees (squares and crosses stay upright-ish so they keep their identity).
SHAPES = {
    "circle": ([(_regular_polygon(40), 1)], 0),
    "square": ([(_regular_polygon(4, math.pi / 4), 1)], 20),
    "triangle": ([(_regular_polygon(3, -math.pi / 2), 1)], 180),
    "star": ([(_star(), 1)], 180),
    "ellipse": ([(_regular_polygon(40) * [1.0, 0.5], 1)], 180),
    "cross": ([(_cross(), 1)], 20),
    "ring": ([(_regular_polygon(40), 1), (_regular_polygon(40, radius=0.55), 0)], 0),
    "hexagon": ([(_regular_polygon(6), 1)], 180),
    "arrow": ([(_ARROW, 1)], 180),
    "heart": ([(_heart(), 1)], 25),
    "crescent": ([(_regular_polygon(40), 1), (_regular_polygon(40, radius=0.85) + [0.45, 0.0], 0)], 180),
}


# --- the two data sets -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Style:
    classes: tuple[tuple[str, str, tuple[float, float] | None], ...]  # (name, shape, hue range in turns or None)
    objects_per_image: tuple[int, int]
    small_fraction: float  # share of objects drawn with diameter in small_diameter
    small_diameter: tuple[float, float]
    diameter: tuple[float, float]
    background: str  # "light-clutter" | "dark-gradient"
    textures: tuple[float, float, float]  # probabilities of solid, stripes, noise fill


_RED, _BLUE = (-0.04, 0.04), (0.56, 0.66)  # hue ranges (fraction of the colour wheel), jittered per object
_STYLES = {
    "shapes-a": _Style(
        classes=tuple((f"{family} {shape}", shape, hues) for shape in ("circle", "square", "triangle", "star",
                                                                        "ellipse", "cross")
                      for family, hues in (("red", _RED), ("blue", _BLUE))),
        objects_per_image=(1, 8), small_fraction=0.3, small_diameter=(12, 22), diameter=(24, 50),
        background="light-clutter", textures=(0.6, 0.2, 0.2)),
    "shapes-b": _Style(
        classes=tuple((shape, shape, None) for shape in ("ring", "hexagon", "arrow", "heart", "crescent")),
        objects_per_image=(1, 6), small_fraction=0.0, small_diameter=(0, 0), diameter=(22, 52),
        background="dark-gradient", textures=(0.7, 0.3, 0.0)),
}
BUILTIN_DATASETS = tuple(_STYLES)


def builtin_categories(name: str) -> list[dict]:
    """COCO ``categories`` of a built-in set: ids 1..N in a fixed order."""
    style = _style(name)
    return [{"id": i + 1, "name": cls_name, "supercategory": "shape"} for i, (cls_name, _, _) in
            enumerate(style.classes)]


def _style(name: str) -> _Style:
    if name not in _STYLES:
        raise ValueError(f"unknown built-in dataset {name!r}; choose one of {list(_STYLES)}")
    return _STYLES[name]


# --- drawing -----------------------------------------------------------------------------------------------------

def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _background(style: _Style, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if style.background == "light-clutter":
        base = _hsv(rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.75, 0.95))
        img = np.broadcast_to(base, (size, size, 3)).copy()
        img += rng.normal(0, 0.03, img.shape).astype(np.float32)
        # Clutter: thin lines and dots in muted colours, too thin/small to be mistaken for an object.
        canvas = Image.fromarray(_to_uint8(img))
        draw = ImageDraw.Draw(canvas)
        for _ in range(rng.integers(3, 10)):
            colour = tuple(int(c) for c in 255 * _hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.3, 0.7)))
            draw.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))], fill=colour, width=1)
        for _ in range(rng.integers(5, 15)):
            colour = tuple(int(c) for c in 255 * _hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.3, 0.7)))
            x, y, r = *rng.uniform(0, size, 2), rng.uniform(0.5, 1.5)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        return np.asarray(canvas, dtype=np.float32) / 255
    # dark gradient between two dark colours along a random direction
    angle = rng.uniform(0, 2 * math.pi)
    t = np.clip((xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle) + 0.5, 0, 1)[..., None]
    c0 = _hsv(rng.random(), rng.uniform(0.2, 0.6), rng.uniform(0.05, 0.2))
    c1 = _hsv(rng.random(), rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.3))
    img = (1 - t) * c0 + t * c1
    return img + rng.normal(0, 0.015, img.shape).astype(np.float32)


def _paint(style: _Style, hues: tuple[float, float] | None, ys: np.ndarray, xs: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Colours (N, 3) for an object's pixels (ys, xs): a jittered colour of its family, solid or textured."""
    if hues is None:  # any bright colour
        colour = _hsv(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
    else:
        colour = _hsv(rng.uniform(*hues), rng.uniform(0.6, 1.0), rng.uniform(0.55, 0.95))
    kind = rng.choice(3, p=style.textures)
    paint = np.tile(colour, (len(ys), 1))
    if kind == 1:  # stripes of the colour and a darker shade
        angle, period = rng.uniform(0, math.pi), rng.uniform(4, 8)
        stripe = ((xs * math.cos(angle) + ys * math.sin(angle)) / period) % 1.0 < 0.5
        paint[stripe] *= 0.6
    elif kind == 2:  # per-pixel noise
        paint += rng.normal(0, 0.1, paint.shape).astype(np.float32)
    return paint


def _polygon_mask(layers, centre, radius: float, angle: float, size: int) -> np.ndarray:
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon, value in layers:
        pts = polygon @ rot.T * radius + centre
        draw.polygon([tuple(p) for p in pts], fill=value)
    return np.asarray(canvas, dtype=bool)


def _extent(layers, radius: float, angle: float) -> np.ndarray:
    """Half-extent (x, y) of the rotated shape, used to place it fully inside the image."""
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = layers[0][0] @ rot.T * radius
    return np.abs(pts).max(0)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box (xyxy): limits how much one object may hide another."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def draw_image(name: str, size: int, rng: np.random.Generator, max_overlap: float = 0.15):
    """Draw one image. Returns (HxWx3 uint8 array, list of (category index, visible bool mask))."""
    style = _style(name)
    img = _background(style, size, rng)
    return _draw_objects(style, img, size, rng, max_overlap)


def _draw_objects(style: _Style, img: np.ndarray, size: int, rng: np.random.Generator, max_overlap: float):
    """Paint the style's objects onto img (float HxWx3, in place). Returns (uint8 image, [(class, visible mask)])."""
    scale = size / REFERENCE_SIZE
    placed_boxes, objects = [], []  # objects: [category index, mask]
    for _ in range(rng.integers(style.objects_per_image[0], style.objects_per_image[1] + 1)):
        cls = int(rng.integers(len(style.classes)))
        _, shape, hues = style.classes[cls]
        layers, max_rotation = SHAPES[shape]
        small = rng.random() < style.small_fraction
        radius = scale * rng.uniform(*(style.small_diameter if small else style.diameter)) / 2
        angle = math.radians(rng.uniform(-max_rotation, max_rotation))
        half = _extent(layers, radius, angle)
        for _attempt in range(20):
            centre = rng.uniform(half + 1, size - half - 1)
            box = np.concatenate([centre - half, centre + half])
            if all(_overlap(box, other) <= max_overlap for other in placed_boxes):
                break
        else:
            continue  # no room left for this object; the image simply holds fewer
        mask = _polygon_mask(layers, centre, radius, angle, size)
        if mask.sum() < 4:
            continue
        ys, xs = np.nonzero(mask)
        img[ys, xs] = _paint(style, hues, ys, xs, rng)
        for other in objects:  # the new object hides what lies under it
            other[1] &= ~mask
        placed_boxes.append(box)
        objects.append([cls, mask])
    return _to_uint8(img), [(cls, mask) for cls, mask in objects if mask.any()]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# --- writing COCO --------------------------------------------------------------------------------------------------

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
    _style(name)  # fail early on a bad name
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
