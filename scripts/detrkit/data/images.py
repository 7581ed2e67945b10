"""Image references of detection records, and reading them: sizes from headers, pixels upright in RGB.

A record's ``image`` is a path, a PIL image, a ``{"bytes", "path"}`` dict as ``datasets`` stores images, or (while
a ``datasets`` table is checked) a :class:`DatasetRow` pointing into its image column. EXIF orientation is applied
everywhere, as ``datasets`` and the image processor do.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["CheckImages", "DatasetImages", "DatasetRow", "check_mode", "image_size", "open_image"]

CheckImages = Literal["header", "decode", "none"]
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class DatasetImages:
    """The undecoded ``image`` column of a ``datasets.Dataset``, read one row at a time (never all at once)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, row: int):
        return self.dataset[int(row)]["image"]


@dataclass(frozen=True)
class DatasetRow:
    """An image in row ``row`` of a ``datasets`` image column, while records are checked."""

    images: DatasetImages
    row: int

    def load(self):
        return self.images[self.row]


def _open(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, DatasetRow):
        image = image.load()
    if isinstance(image, dict):  # datasets' undecoded Image: bytes, or a path when the bytes are not stored
        return Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") is not None else Image.open(image["path"])
    return Image.open(image)


def _orientation(img: Image.Image) -> int:
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # Pillow's PNG getexif() decodes all pixels to look for an eXIf chunk after them
    return img.getexif().get(EXIF_ORIENTATION, 1)


def open_image(image: Any) -> Image.Image:
    """Decode an image reference (path, PIL image, or ``datasets`` ``{"bytes", "path"}`` dict) to upright RGB.

    EXIF orientation is applied, as ``datasets`` and the image processor do, so sizes and boxes refer to the
    image as viewers show it (a file annotated in raw orientation shows up as a size mismatch in validation)."""
    img = _open(image)
    img.load()
    if _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)  # also drops the tag, so nothing downstream turns it again
    return img.convert("RGB") if img.mode != "RGB" else img


def check_mode(check_images: bool | str) -> CheckImages:
    """``True`` (decode every image) / ``False`` (trust the declared sizes) or a mode by name."""
    mode = {True: "decode", False: "none"}.get(check_images, check_images) if isinstance(check_images, bool) \
        else check_images
    if mode not in ("header", "decode", "none"):
        raise ValueError(f"check_images must be 'header', 'decode' or 'none', got {check_images!r}")
    return mode


def image_size(image: Any, check: CheckImages = "header") -> tuple[int, int] | str:
    """(width, height) of an image as viewers show it, or the reason it cannot be read. ``"header"`` reads only
    the header (fast); ``"decode"`` reads all pixels, so that a truncated file fails now, with its record."""
    if isinstance(image, (str, Path)) and not os.path.isfile(image):
        return f"image file not found: {image}"
    try:
        if isinstance(image, Image.Image):
            width, height, orientation = *image.size, _orientation(image)
        else:
            with _open(image) as img:
                if check == "decode":
                    img.load()
                width, height, orientation = *img.size, _orientation(img)
        return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, KeyError, TypeError) as err:
        return f"cannot decode image ({type(err).__name__}: {err})"
