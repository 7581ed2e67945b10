"""Training augmentations of the DETR recipe, box-aware through torchvision.transforms.v2 + tv_tensors.

DETR (Carion et al. 2020, and its ``datasets/coco.py``): horizontal flip, then with probability 1/2 either

* multi-scale resize: shortest edge drawn from 480..800 (step 32), longest edge at most 1333, or
* the random-size-crop branch: resize to a shortest edge in {400, 500, 600}, crop a random 384..600 px region,
  then the multi-scale resize.

Evaluation uses no augmentation: the processor resizes to the largest scale. All sizes live in an
:class:`AugmentationConfig`; :meth:`AugmentationConfig.for_image_size` scales the whole recipe down for small
images (the built-in 128 px data would otherwise be upsampled 6x). Boxes that leave the crop are dropped, and
with them every per-box field (category, area, id...), because the transforms carry annotation indices.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["AugmentationConfig", "RandomSizeCrop", "augment", "detr_train_transforms"]

_INDEX_KEY = "annotation_index"


@dataclass(frozen=True)
class AugmentationConfig:
    """Sizes (pixels) and probabilities of the DETR training recipe; the defaults are the paper's."""

    scales: tuple[int, ...] = tuple(range(480, 801, 32))  # shortest-edge choices of the multi-scale resize
    max_size: int = 1333  # cap on the longest edge
    crop_resize_scales: tuple[int, ...] = (400, 500, 600)  # shortest edge before the random-size crop
    crop_size: tuple[int, int] = (384, 600)  # min and max side of the random crop
    flip_prob: float = 0.5
    crop_prob: float = 0.5  # share of samples through the crop branch (DETR's RandomSelect)
    # photometric (not in DETR's recipe; what YOLO-style users expect): brightness, contrast and saturation each
    # scaled by a factor drawn from [1 - color_jitter, 1 + color_jitter]; 0 leaves colours alone
    color_jitter: float = 0.0

    def __post_init__(self):
        if not self.scales or not self.crop_resize_scales:
            raise ValueError("scales and crop_resize_scales need at least one size each")
        if min(self.scales + self.crop_resize_scales) < 1 or self.max_size < max(self.scales):
            raise ValueError(f"sizes must be positive and max_size ({self.max_size}) >= the largest scale")
        if not 1 <= self.crop_size[0] <= self.crop_size[1]:
            raise ValueError(f"crop_size must be (min, max) with 1 <= min <= max, got {self.crop_size}")
        if not (0 <= self.flip_prob <= 1 and 0 <= self.crop_prob <= 1):
            raise ValueError("flip_prob and crop_prob are probabilities in [0, 1]")
        if not 0 <= self.color_jitter <= 1:
            raise ValueError(f"color_jitter must be in [0, 1], got {self.color_jitter}")

    def scaled(self, factor: float) -> "AugmentationConfig":
        """The same recipe with every size multiplied by ``factor`` (duplicates from rounding removed)."""
        def scale(sizes):
            return tuple(sorted({max(1, round(s * factor)) for s in sizes}))
        return replace(self, scales=scale(self.scales), max_size=max(1, round(self.max_size * factor)),
                       crop_resize_scales=scale(self.crop_resize_scales),
                       crop_size=(max(1, round(self.crop_size[0] * factor)), max(1, round(self.crop_size[1] * factor))))

    @classmethod
    def for_image_size(cls, eval_shortest_edge: int, **overrides) -> "AugmentationConfig":
        """The paper's recipe scaled so that its largest scale (800) becomes ``eval_shortest_edge``."""
        return replace(cls().scaled(eval_shortest_edge / 800), **overrides)

    @property
    def eval_size(self) -> dict[str, int]:
        """The processor ``size`` that matches this recipe at evaluation: the largest scale, same cap."""
        return {"shortest_edge": max(self.scales), "longest_edge": self.max_size}


class RandomSizeCrop(v2.Transform):
    """Crop a region with random width in [min_size, min(W, max_size)] and height in [min_size, min(H, max_size)]
    at a random position (DETR's RandomSizeCrop; a side shorter than min_size is kept whole)."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        h = int(torch.randint(min(self.min_size, height), min(height, self.max_size) + 1, ()))
        w = int(torch.randint(min(self.min_size, width), min(width, self.max_size) + 1, ()))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        return {"top": top, "left": left, "height": h, "width": w}

    def transform(self, inpt, params: dict):
        return self._call_kernel(F.crop, inpt, **params)


def _annotation_index(sample: dict) -> torch.Tensor:
    # SanitizeBoundingBoxes filters this alongside the boxes; a module-level function keeps the pipeline picklable.
    return sample[_INDEX_KEY]


def detr_train_transforms(config: AugmentationConfig = AugmentationConfig()) -> v2.Compose:
    """The DETR training pipeline for ``{"image", "boxes", "annotation_index"}`` samples (see :func:`augment`)."""
    multi_scale = v2.RandomShortestSize(list(config.scales), max_size=config.max_size, antialias=True)
    crop_branch = v2.Compose([
        v2.RandomShortestSize(list(config.crop_resize_scales), max_size=config.max_size, antialias=True),
        RandomSizeCrop(*config.crop_size),
        multi_scale,
    ])
    photometric = [v2.ColorJitter(*[config.color_jitter] * 3)] if config.color_jitter else []
    return v2.Compose([
        *photometric,  # boxes pass through untouched
        v2.RandomHorizontalFlip(config.flip_prob),
        v2.RandomChoice([multi_scale, crop_branch], p=[1 - config.crop_prob, config.crop_prob]),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(labels_getter=_annotation_index),  # drops boxes under 1 px: cropped away
    ])


def augment(transforms, image: Image.Image | torch.Tensor, annotations: list[dict]):
    """Apply box-aware ``transforms`` to an image and its COCO-style annotations (bbox [x, y, w, h]).

    Returns (uint8 (C, H, W) tv_tensors.Image, annotations that survived, with new ``bbox`` and ``area``).
    Area is scaled with the box (exact for resizes, the visible share for crops); a ``segmentation`` is left out
    since the transforms do not move masks.
    """
    image = tv_tensors.Image(F.pil_to_tensor(image) if isinstance(image, Image.Image) else image)
    height, width = image.shape[-2:]
    boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
    sample = {
        "image": image,
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYWH", canvas_size=(height, width)),
        _INDEX_KEY: torch.arange(len(annotations)),
    }
    out = transforms(sample)
    new_boxes = F.convert_bounding_box_format(out["boxes"], new_format=tv_tensors.BoundingBoxFormat.XYWH)
    result = []
    for index, box in zip(out[_INDEX_KEY].tolist(), new_boxes.tolist()):
        ann = {k: v for k, v in annotations[index].items() if k != "segmentation"}
        old_area = boxes[index, 2] * boxes[index, 3]
        ann["area"] = float(ann.get("area", old_area)) * box[2] * box[3] / float(old_area)
        ann["bbox"] = box
        result.append(ann)
    return out["image"], result
