"""Mask annotations -> DETR targets with per-segment masks, for the segmentation models' losses.

    COCO panoptic: a PNG whose RGB colour encodes the segment id (id = R + 256 G + 256^2 B, panopticapi's
        encoding; 0 = void) + `segments_info` [{"id", "category_id", "iscrowd", "area"?, "bbox"?}]
    COCO instances: per object `segmentation` as polygons, uncompressed RLE or compressed RLE (pycocotools)

The target is transformers' DetrImageProcessor's: `masks` (N, H, W) bool, `boxes` absolute (x0, y0, x1, y1)
taken from the masks for panoptic segments (x1, y1 being the last pixel's index, as DETR's masks_to_boxes),
`class_labels` (the category ids as given), `iscrowd`, `area`. Panoptic crowd segments are kept and flagged,
as in the DETR authors' panoptic data; a map that does not match its `segments_info` is an error naming the
image and the segment id, as panopticapi's evaluation treats it.
This file imports only installed packages (it travels with the image processor as Hub remote code).
"""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

try:  # only COCO polygons / RLE need it; in a try block, Hub remote code does not require it to load
    from pycocotools import mask as mask_utils
except ImportError:
    mask_utils = None


class SegmentationAnnotationError(ValueError):
    """A mask annotation that cannot be used; the message names the image and the segment or object."""


def rgb_to_id(color) -> np.ndarray:
    """(H, W, 3) RGB array -> (H, W) int64 segment ids, panopticapi's encoding id = R + 256 G + 256^2 B."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[-1] != 3:
        raise SegmentationAnnotationError(f"a panoptic PNG must be RGB (H, W, 3), got shape {color.shape}")
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id_to_rgb(ids) -> np.ndarray:
    """(H, W) integer segment ids -> (H, W, 3) uint8 RGB, the inverse of rgb_to_id."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256 ** 3:
        raise SegmentationAnnotationError("segment ids must lie in [0, 256^3) to be written as RGB")
    return np.stack([ids % 256, ids // 256 % 256, ids // 256 ** 2], axis=-1).astype(np.uint8)


def read_panoptic_map(source, where: str) -> np.ndarray:
    """A panoptic map as (H, W) int64 ids from a PNG path, a PIL image or an array ((H, W, 3) RGB or (H, W) ids)."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with PIL.Image.open(source) as image:
                source = np.asarray(image.convert("RGB"))
        except FileNotFoundError as error:
            raise SegmentationAnnotationError(f"{where}: panoptic PNG not found: {os.fspath(source)}") from error
        except (OSError, SyntaxError) as error:
            raise SegmentationAnnotationError(f"{where}: cannot read the panoptic PNG {source}: {error}") from error
    elif isinstance(source, PIL.Image.Image):
        if source.mode not in ("RGB", "RGBA"):
            raise SegmentationAnnotationError(
                f"{where}: a panoptic PNG must be RGB (id = R + 256 G + 256^2 B), got mode {source.mode}"
            )
        source = np.asarray(source.convert("RGB"))
    array = np.asarray(source.cpu() if isinstance(source, torch.Tensor) else source)
    if array.ndim == 2:
        if not np.issubdtype(array.dtype, np.integer):
            raise SegmentationAnnotationError(
                f"{where}: a (H, W) panoptic map must hold integer ids, got {array.dtype}"
            )
        return array.astype(np.int64)
    return rgb_to_id(array)


def panoptic_map_source(annotation: dict, masks_path, where: str):
    """Where an annotation's panoptic map comes from: its own `panoptic_map` (array / PIL image) or
    masks_path / file_name."""
    if annotation.get("panoptic_map") is not None:
        return annotation["panoptic_map"]
    if "file_name" not in annotation:
        raise SegmentationAnnotationError(
            f"{where}: a COCO panoptic annotation needs 'file_name' (the PNG under masks_path) or 'panoptic_map'"
        )
    if masks_path is None:
        raise SegmentationAnnotationError(
            f"{where}: masks_path (the folder of the panoptic PNGs) is needed to read {annotation['file_name']!r}"
        )
    return os.path.join(masks_path, annotation["file_name"])


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) float (x0, y0, x1, y1), x1/y1 the last covered pixel's index (DETR's convention);
    an empty mask gives a zero box."""
    if masks.numel() == 0:
        return torch.zeros((len(masks), 4), dtype=torch.float32)
    rows, cols = masks.any(2), masks.any(1)  # (N, H), (N, W)

    def first_last(covered):
        index = torch.arange(covered.shape[1], dtype=torch.float32)
        first = torch.where(covered, index, float("inf")).min(1).values
        last = torch.where(covered, index, -1.0).max(1).values
        empty = ~covered.any(1)
        return first.masked_fill(empty, 0), last.masked_fill(empty, 0)

    x0, x1 = first_last(cols)
    y0, y1 = first_last(rows)
    return torch.stack([x0, y0, x1, y1], 1)


def coco_panoptic_to_target(annotation, index: int, height: int, width: int, masks_path=None,
                            return_masks: bool = True) -> dict[str, torch.Tensor]:
    """One image's COCO panoptic annotation -> DETR target with masks (N, H, W) bool, boxes absolute xyxy."""
    where = f"image {index}"
    if not isinstance(annotation, dict) or "segments_info" not in annotation:
        found = sorted(annotation) if isinstance(annotation, dict) else type(annotation).__name__
        raise SegmentationAnnotationError(
            f"annotation of {where}: expected COCO panoptic format {{'image_id', 'file_name', 'segments_info': "
            f"[{{'id', 'category_id', ...}}]}}, got {found}"
        )
    image_id = annotation.get("image_id", annotation.get("id"))
    if image_id is None:
        raise SegmentationAnnotationError(f"annotation of {where}: no 'image_id'")
    where = f"image {index} (id {image_id})"
    segments = annotation["segments_info"]
    for j, segment in enumerate(segments):
        if not isinstance(segment, dict) or "id" not in segment or "category_id" not in segment:
            raise SegmentationAnnotationError(
                f"{where}: segments_info[{j}] needs 'id' and 'category_id', got {segment!r}"
            )
    ids = [int(segment["id"]) for segment in segments]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SegmentationAnnotationError(f"{where}: segment id {duplicates[0]} appears twice in segments_info")
    if 0 in ids:
        raise SegmentationAnnotationError(f"{where}: segment id 0 is VOID in the panoptic encoding, not a segment")

    id_map = read_panoptic_map(panoptic_map_source(annotation, masks_path, where), where)
    if id_map.shape != (height, width):
        raise SegmentationAnnotationError(
            f"{where}: the panoptic map is {id_map.shape[1]}x{id_map.shape[0]} but the image is {width}x{height} "
            "(width x height)"
        )
    present, counts = np.unique(id_map, return_counts=True)
    unknown = sorted(set(present.tolist()) - set(ids) - {0})
    if unknown:
        raise SegmentationAnnotationError(
            f"{where}: segment id {unknown[0]} is in the panoptic map but not in segments_info"
            + (f" ({len(unknown)} such ids)" if len(unknown) > 1 else "")
        )
    area_of = dict(zip(present.tolist(), counts.tolist()))
    missing = [i for i in ids if i not in area_of]
    if missing:
        raise SegmentationAnnotationError(
            f"{where}: segment id {missing[0]} of segments_info is not in the panoptic map"
        )

    id_map = torch.from_numpy(id_map)
    masks = id_map[None] == torch.tensor(ids, dtype=torch.int64).view(-1, 1, 1)  # (N, H, W)
    target = {
        "image_id": torch.tensor([int(image_id)], dtype=torch.int64),
        "class_labels": torch.tensor([int(s["category_id"]) for s in segments], dtype=torch.int64),
        "boxes": masks_to_boxes(masks),
        "area": torch.tensor([float(s.get("area", area_of[i])) for s, i in zip(segments, ids)], dtype=torch.float32),
        "iscrowd": torch.tensor([int(s.get("iscrowd", 0)) for s in segments], dtype=torch.int64),
        "orig_size": torch.tensor([height, width], dtype=torch.int64),
    }
    if return_masks:
        target["masks"] = masks
    return target


def coco_instance_masks(objects, height: int, width: int, where: str) -> torch.Tensor:
    """COCO objects' `segmentation` (polygons, uncompressed or compressed RLE) -> (N, H, W) bool masks."""
    if mask_utils is None:
        raise ImportError("decoding COCO polygons and RLE needs pycocotools: pip install pycocotools")
    masks = np.zeros((len(objects), height, width), dtype=bool)
    for j, obj in enumerate(objects):
        segmentation = obj.get("segmentation") if isinstance(obj, dict) else None
        if segmentation is None:
            raise SegmentationAnnotationError(
                f"{where}, annotation {j}: no 'segmentation' field, but segmentation masks were asked for"
            )
        try:
            if isinstance(segmentation, dict):
                size = list(segmentation.get("size", ()))
                if size != [height, width]:
                    raise SegmentationAnnotationError(
                        f"{where}, annotation {j}: RLE size {size} does not match the image's [height, width] "
                        f"{[height, width]}"
                    )
                counts = segmentation.get("counts")
                rle = (mask_utils.frPyObjects(segmentation, height, width) if isinstance(counts, list)
                       else {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts})
                masks[j] = mask_utils.decode(rle).astype(bool)
            else:
                polygons = [p for p in segmentation if len(p) >= 6]  # pycocotools needs 3+ points
                if len(polygons) != len(segmentation):
                    raise SegmentationAnnotationError(
                        f"{where}, annotation {j}: a polygon has fewer than 3 points (x, y pairs)"
                    )
                if polygons:
                    masks[j] = mask_utils.decode(mask_utils.frPyObjects(polygons, height, width)).any(-1)
        except SegmentationAnnotationError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise SegmentationAnnotationError(
                f"{where}, annotation {j}: cannot decode 'segmentation' (polygons [[x, y, ...]] or RLE "
                f"{{'size', 'counts'}}): {error}"
            ) from error
    return torch.from_numpy(masks)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) bool -> (N, h, w) bool by nearest-exact sampling (transformers resizes masks so, then > 0.5)."""
    if masks.shape[-2:] == tuple(size):
        return masks
    if len(masks) == 0:
        return masks.new_zeros((0, *size))
    return F.interpolate(masks[None].to(torch.uint8), size=tuple(size), mode="nearest-exact")[0].bool()


def pad_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad (N, h, w) masks at the bottom and right to size (H, W)."""
    height, width = masks.shape[-2:]
    if (height, width) == tuple(size):
        return masks
    if height > size[0] or width > size[1]:
        raise SegmentationAnnotationError(f"masks of size {height}x{width} are larger than the padded size {size}")
    return F.pad(masks, (0, size[1] - width, 0, size[0] - height))
