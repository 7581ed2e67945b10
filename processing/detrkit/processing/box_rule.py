"""The one box rule: what becomes of a COCO box [x, y, width, height] on a width x height image.

`detrkit data check`, the data readers (through ``detrkit.data.validation``) and the image processor all ask this
module, so a data set trains on the boxes the check described:

- malformed (not 4 numbers, NaN or infinite, negative width or height): an error naming the image and annotation
  (the data layer's ``invalid_records`` policy skips the image or raises; the processor raises);
- inside the image, touching its edge included: kept as given;
- crossing the image edge: clipped to the image and kept (``CLIPPED``; the data layer counts them);
- zero width or height, or entirely outside the image (zero size once clipped): dropped (``ZERO_SIZE``,
  ``OUTSIDE``; the data layer names each by image and annotation).

The arithmetic is transformers' DetrImageProcessor's, in float32: corners (x, y, x + w, y + h), clamped to
[0, width] x [0, height], kept when x1 > x0 and y1 > y0; so kept boxes come out bit-identical to it. It imports
only numpy (the data layer imports it where it checks records: ``detrkit.processing`` loads torch).
"""

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["CLIPPED", "INSIDE", "OUTSIDE", "ZERO_SIZE", "MalformedBoxError", "apply_box_rule", "dropped_message",
           "parse_box"]

INSIDE, CLIPPED, ZERO_SIZE, OUTSIDE = 0, 1, 2, 3  # what apply_box_rule says of each box
DROPPED = (ZERO_SIZE, OUTSIDE)


class MalformedBoxError(ValueError):
    """A box no rule can place: not 4 numbers, NaN or infinite, or a negative width or height."""


def parse_box(bbox) -> tuple[float, float, float, float]:
    """``bbox`` as 4 floats (x, y, width, height), or MalformedBoxError saying what is wrong with it."""
    if not _is_sequence(bbox) or len(bbox) != 4:
        raise MalformedBoxError(f"'bbox' must be 4 numbers [x, y, width, height], got {bbox!r}")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise MalformedBoxError(f"'bbox' must be 4 numbers [x, y, width, height], got {bbox!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise MalformedBoxError(f"'bbox' has NaN or inf: {_shown(bbox)}")
    if w < 0 or h < 0:
        raise MalformedBoxError(
            f"'bbox' {_shown(bbox)} has negative width or height (COCO boxes are [x, y, width, height])")
    return x, y, w, h


def apply_box_rule(boxes, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Parsed boxes (N, 4) [x, y, w, h] -> (corners (N, 4) float32 (x0, y0, x1, y1) clipped to the image,
    outcome (N,) int8: INSIDE, CLIPPED, ZERO_SIZE or OUTSIDE). Rows with a dropped outcome are to be left out."""
    corners = np.array(boxes, dtype=np.float32).reshape(-1, 4)  # float32 as transformers: the same roundings
    corners[:, 2:] += corners[:, :2]
    x0, y0, x1, y1 = corners.T.copy()
    np.clip(corners[:, 0::2], 0, width, out=corners[:, 0::2])
    np.clip(corners[:, 1::2], 0, height, out=corners[:, 1::2])
    zero = (x1 <= x0) | (y1 <= y0)  # given so, or too thin to survive float32
    kept = (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
    crossing = (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height)
    outcome = np.where(kept, np.where(crossing, CLIPPED, INSIDE), np.where(zero, ZERO_SIZE, OUTSIDE))
    return corners, outcome.astype(np.int8)


def dropped_message(outcome: int, bbox, width: int, height: int) -> str:
    """Why a box with a dropped ``outcome`` is left out, in the words the check and training both print."""
    if outcome == ZERO_SIZE:
        return f"'bbox' {_shown(bbox)} has zero width or height: dropped"
    return f"'bbox' {_shown(bbox)} lies entirely outside the {width}x{height} (width x height) image: dropped"


def _is_sequence(bbox) -> bool:  # a list, tuple, array or tensor (a str, a set or a 0-d array is no box)
    return (isinstance(bbox, (Sequence, np.ndarray)) or hasattr(bbox, "tolist")) and not isinstance(
        bbox, (str, bytes)) and getattr(bbox, "ndim", 1) == 1


def _shown(bbox) -> list:
    return [float(v) for v in bbox]
