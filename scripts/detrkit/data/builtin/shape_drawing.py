"""Drawing the built-in shapes: coloured polygons with textures on light cluttered or dark gradient backgrounds.

The styles of the built-in sets (``shapes.py`` writes the detection sets, ``panoptic_shapes.py`` the panoptic
ones) say which shapes in which colours, how many objects per image and how large; :func:`draw_objects` paints a
style's objects onto any background, each new object hiding what lies under it.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["REFERENCE_SIZE", "SHAPES", "STYLES", "ShapeStyle", "draw_image", "draw_objects", "hsv", "shape_style"]

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


# --- the styles of the built-in sets ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ShapeStyle:
    """What one built-in set draws: its classes (each a shape in a colour family) and how images are filled."""

    classes: tuple[tuple[str, str, tuple[float, float] | None], ...]  # (name, shape, hue range in turns or None)
    objects_per_image: tuple[int, int]
    small_fraction: float  # share of objects drawn with diameter in small_diameter
    small_diameter: tuple[float, float]
    diameter: tuple[float, float]
    background: str  # "light-clutter" | "dark-gradient"
    textures: tuple[float, float, float]  # probabilities of solid, stripes, noise fill


_RED, _BLUE = (-0.04, 0.04), (0.56, 0.66)  # hue ranges (fraction of the colour wheel), jittered per object
STYLES = {
    "shapes-a": ShapeStyle(
        classes=tuple((f"{family} {shape}", shape, hues) for shape in ("circle", "square", "triangle", "star",
                                                                        "ellipse", "cross")
                      for family, hues in (("red", _RED), ("blue", _BLUE))),
        objects_per_image=(1, 8), small_fraction=0.3, small_diameter=(12, 22), diameter=(24, 50),
        background="light-clutter", textures=(0.6, 0.2, 0.2)),
    "shapes-b": ShapeStyle(
        classes=tuple((shape, shape, None) for shape in ("ring", "hexagon", "arrow", "heart", "crescent")),
        objects_per_image=(1, 6), small_fraction=0.0, small_diameter=(0, 0), diameter=(22, 52),
        background="dark-gradient", textures=(0.7, 0.3, 0.0)),
}


def shape_style(name: str) -> ShapeStyle:
    """The style of built-in set ``name`` ("shapes-a" or "shapes-b"); a ValueError names the sets for any other."""
    if name not in STYLES:
        raise ValueError(f"unknown built-in dataset {name!r}; choose one of {list(STYLES)}")
    return STYLES[name]


# --- drawing -----------------------------------------------------------------------------------------------------

def hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB float32 colour from hue (in turns, wrapped), saturation and value."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _background(style: ShapeStyle, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if style.background == "light-clutter":
        base = hsv(rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.75, 0.95))
        img = np.broadcast_to(base, (size, size, 3)).copy()
        img += rng.normal(0, 0.03, img.shape).astype(np.float32)
        # Clutter: thin lines and dots in muted colours, too thin/small to be mistaken for an object.
        canvas = Image.fromarray(_to_uint8(img))
        draw = ImageDraw.Draw(canvas)
        for _ in range(rng.integers(3, 10)):
            colour = tuple(int(c) for c in 255 * hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.3, 0.7)))
            draw.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))], fill=colour, width=1)
        for _ in range(rng.integers(5, 15)):
            colour = tuple(int(c) for c in 255 * hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.3, 0.7)))
            x, y, r = *rng.uniform(0, size, 2), rng.uniform(0.5, 1.5)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        return np.asarray(canvas, dtype=np.float32) / 255
    # dark gradient between two dark colours along a random direction
    angle = rng.uniform(0, 2 * math.pi)
    t = np.clip((xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle) + 0.5, 0, 1)[..., None]
    c0 = hsv(rng.random(), rng.uniform(0.2, 0.6), rng.uniform(0.05, 0.2))
    c1 = hsv(rng.random(), rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.3))
    img = (1 - t) * c0 + t * c1
    return img + rng.normal(0, 0.015, img.shape).astype(np.float32)


def _paint(style: ShapeStyle, hues: tuple[float, float] | None, ys: np.ndarray, xs: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Colours (N, 3) for an object's pixels (ys, xs): a jittered colour of its family, solid or textured."""
    if hues is None:  # any bright colour
        colour = hsv(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
    else:
        colour = hsv(rng.uniform(*hues), rng.uniform(0.6, 1.0), rng.uniform(0.55, 0.95))
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
    style = shape_style(name)
    img = _background(style, size, rng)
    return draw_objects(style, img, size, rng, max_overlap)


def draw_objects(style: ShapeStyle, img: np.ndarray, size: int, rng: np.random.Generator, max_overlap: float):
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
