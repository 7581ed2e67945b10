"""Image processors for DETR and Deformable DETR.

    images (PIL / numpy / torch / file paths / bytes)  ->  `pixel_values` (B, 3, H, W) + `pixel_mask` (B, H, W)
    COCO detection annotations                          ->  `labels`: one dict of tensors per image
    model outputs (logits, pred_boxes)                  ->  detections with absolute (x0, y0, x1, y1) boxes

Annotation conventions, the same for every entry point:
- `area` defaults to the box's width * height and `iscrowd` to 0 when absent.
- Crowd objects (`iscrowd=1`) are dropped, as DETR trains without them.
- Boxes follow the one box rule (box_rule.py, shared with `detrkit data check` and the data readers): a box
  crossing the image edge is clipped to it; zero width or height, or entirely outside the image, dropped;
  NaN / inf, negative width or height, or not 4 numbers, an error.
- Normalized boxes (cx, cy, w, h) are relative to the resized image, not to the padded canvas, as in the DETR
  authors' code: the model predicts boxes relative to the visible image (its sine position encoding is normalized
  over the pixel mask) and `post_process_object_detection` scales them by the image's own size. transformers
  normalizes over the padded canvas instead; `normalize_boxes_to_padded_image=True` reproduces that.

The processor follows transformers' torchvision-backed image processors (kwargs, save/load, Auto classes), but the
batch is built in one pass: each image is resized as uint8 and written, rescaled and normalized in one fused
multiply-add, straight into its slot of the padded output, instead of normalize -> pad -> stack copies.
This file imports only installed packages and its own folder (box_rule.py, segmentation_annotations.py,
segmentation_postprocessing.py), so it travels with those files as Hub remote code.
"""

import io
import os

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature, get_size_dict
from transformers.image_transforms import get_size_with_aspect_ratio
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PILImageResampling,
    SizeDict,
    get_image_size_for_max_height_width,
    pil_torch_interpolation_mapping,
)
from transformers.processing_utils import ImagesKwargs

from .box_rule import DROPPED, MalformedBoxError, apply_box_rule, parse_box
from .segmentation_annotations import (
    SegmentationAnnotationError, coco_instance_masks, coco_panoptic_to_target, pad_masks, resize_masks,
)
from .segmentation_postprocessing import (
    post_process_instance_segmentation, post_process_panoptic_segmentation, post_process_semantic_segmentation,
)

EXIF_ORIENTATION = 0x0112


class DetrProcessingError(SegmentationAnnotationError):
    """Bad input to a DETR image processor; the message names the image, annotation and field at fault.

    A SegmentationAnnotationError (a ValueError), so one `except` catches bad masks and bad boxes alike."""


class DetrImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    format (`str`, *optional*, defaults to `"coco_detection"`):
        Annotation format: `"coco_detection"` (`{"image_id", "annotations": [{"bbox", "category_id", ...}]}`) or
        `"coco_panoptic"` (`{"image_id", "file_name", "segments_info": [{"id", "category_id", ...}]}` with the
        PNG under `masks_path`, or the map itself as `"panoptic_map"`).
    do_convert_annotations (`bool`, *optional*, defaults to `True`):
        Turn boxes into normalized (cx, cy, w, h); otherwise they stay absolute (x0, y0, x1, y1) in resized pixels.
    normalize_boxes_to_padded_image (`bool`, *optional*, defaults to `False`):
        Normalize boxes by the padded canvas and report the padded size as `size` (transformers' convention)
        instead of by the resized image (the DETR authors' convention).
    """

    format: str | None
    do_convert_annotations: bool | None
    normalize_boxes_to_padded_image: bool | None


# ----------------------------------------------------------------------------------------------- image loading


def decode_input_image(source, index: int) -> PIL.Image.Image:
    """Decode a file path or encoded bytes now, so that an empty or truncated file fails here, by name."""
    name = f"{len(source)} bytes" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        from transformers.image_utils import load_image  # applies EXIF orientation itself

        return load_image(source)
    try:
        image = PIL.Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        image.load()
    except FileNotFoundError as error:
        raise DetrProcessingError(f"image {index}: file not found: {name}") from error
    except (OSError, SyntaxError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise DetrProcessingError(
            f"image {index} ({name}): cannot decode the image; the file is empty, truncated or not an image ({error})"
        ) from error
    return image


def pil_to_tensor(image: PIL.Image.Image, do_convert_rgb: bool) -> torch.Tensor:
    """PIL image -> (C, H, W) uint8 view of an (H, W, C) array, EXIF orientation applied."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = PIL.ImageOps.exif_transpose(image)
    if do_convert_rgb and image.mode != "RGB":
        # Transparency goes onto white, as transformers' convert_to_rgb does.
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = PIL.Image.alpha_composite(background, image.convert("RGBA"))
        image = image.convert("RGB")
    array = np.array(image)
    if array.ndim == 2:
        return torch.from_numpy(array)[None]
    # Channels-last strides are kept on purpose: torch's uint8 bilinear resize is fastest on them.
    return torch.from_numpy(array).permute(2, 0, 1)


def array_to_tensor(image, index: int) -> torch.Tensor:
    """numpy / torch image, (H, W), (C, H, W) or (H, W, C) with C in {1, 3, 4} -> (C, H, W) tensor."""
    if isinstance(image, np.ndarray):
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        image = torch.from_numpy(image if all(s >= 0 for s in image.strides) else image.copy())
    if image.ndim == 2:
        return image[None]
    if image.ndim != 3:
        raise DetrProcessingError(
            f"image {index} has shape {tuple(image.shape)}; expected (H, W), (C, H, W) or (H, W, C)"
        )
    # Channel axis inferred as transformers does: the first axis if it can be one, else the last.
    if image.shape[0] in (1, 3, 4):
        return image
    if image.shape[-1] in (1, 3, 4):
        return image.permute(2, 0, 1)
    raise DetrProcessingError(
        f"image {index} has shape {tuple(image.shape)}: no axis of 1, 3 or 4 channels (gray, RGB, RGBA); "
        f"{min(image.shape[0], image.shape[-1])}-channel images are not supported"
    )


def to_rgb(image: torch.Tensor, index: int) -> torch.Tensor:
    """(C, H, W) with C in {1, 3, 4} -> (3, H, W); RGBA composited onto white (alpha 0-255 if uint8, else 0-1)."""
    channels = image.shape[0]
    if channels == 1:
        return image.expand(3, -1, -1)
    if channels == 4:
        full = 255.0 if image.dtype == torch.uint8 else 1.0
        rgb, alpha = image[:3].float(), image[3:].float() / full
        composite = rgb * alpha + full * (1 - alpha)
        return composite.round().to(torch.uint8) if image.dtype == torch.uint8 else composite
    if channels != 3:
        raise DetrProcessingError(f"image {index} has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    return image


def load_images(images, do_convert_rgb: bool = True, device=None) -> list[torch.Tensor]:
    """Any supported image input, single or batched -> list of (C, H, W) tensors (uint8 or float)."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        images = list(images)
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) == 0:
        raise DetrProcessingError("no images given")
    tensors = []
    for index, image in enumerate(images):
        if isinstance(image, (str, os.PathLike, bytes, bytearray)):
            image = decode_input_image(image, index)
        if isinstance(image, PIL.Image.Image):
            tensor = pil_to_tensor(image, do_convert_rgb)
        elif isinstance(image, (np.ndarray, torch.Tensor)):
            tensor = array_to_tensor(image, index)
        else:
            raise DetrProcessingError(
                f"image {index} is a {type(image).__name__}; expected a PIL image, numpy array, torch tensor, "
                "file path or encoded bytes"
            )
        if tensor.shape[-2] == 0 or tensor.shape[-1] == 0:
            raise DetrProcessingError(f"image {index} is empty: shape {tuple(tensor.shape)}")
        if tensor.dtype != torch.uint8:
            tensor = tensor.float()
        if do_convert_rgb:
            tensor = to_rgb(tensor, index)
        tensors.append(tensor if device is None else tensor.to(device))
    return tensors


# --------------------------------------------------------------------------------------------- annotations


def coco_detection_to_target(annotation, index: int, height: int, width: int,
                             return_segmentation_masks: bool = False) -> dict[str, torch.Tensor]:
    """One image's COCO detection annotation -> DETR target, boxes absolute (x0, y0, x1, y1) in original pixels.

    Validates every object; drops crowd objects and zero-size boxes; clips boxes to the image. With
    `return_segmentation_masks`, `masks` (N, H, W) bool from each object's polygons or RLE.
    """
    if not isinstance(annotation, dict) or "annotations" not in annotation or "image_id" not in annotation:
        found = sorted(annotation) if isinstance(annotation, dict) else type(annotation).__name__
        hint = " (for COCO panoptic annotations pass format='coco_panoptic')" if isinstance(annotation, dict) and (
            "segments_info" in annotation) else ""
        raise DetrProcessingError(
            f"annotation of image {index}: expected COCO detection format {{'image_id', 'annotations': "
            f"[{{'bbox', 'category_id', ...}}]}}, got {found}{hint}"
        )
    try:
        image_id = int(annotation["image_id"])
    except (TypeError, ValueError) as error:
        raise DetrProcessingError(
            f"annotation of image {index}: 'image_id' must be an integer, got {annotation['image_id']!r}"
        ) from error
    objects = annotation["annotations"]
    if not isinstance(objects, (list, tuple)):
        raise DetrProcessingError(f"image {index}: 'annotations' must be a list, got {type(objects).__name__}")

    boxes, classes, areas, crowd = [], [], [], []
    for j, obj in enumerate(objects):
        where = f"image {index}, annotation {j}"
        if not isinstance(obj, dict) or "bbox" not in obj:
            segmentation_only = isinstance(obj, dict) and "segmentation" in obj
            raise DetrProcessingError(
                f"{where}: no 'bbox' field" + (" (segmentation-only objects are not supported)" if
                                               segmentation_only else f"; got {obj!r}")
            )
        if "category_id" not in obj:
            raise DetrProcessingError(f"{where}: no 'category_id' field")
        bbox = obj["bbox"]
        try:
            x, y, w, h = parse_box(bbox)
        except MalformedBoxError as error:
            raise DetrProcessingError(f"{where}: {error}") from None
        try:
            category = int(obj["category_id"])
            area = float(obj.get("area", w * h))
            iscrowd = int(obj.get("iscrowd", 0))
        except (TypeError, ValueError) as error:
            raise DetrProcessingError(f"{where}: non-numeric field ({error}) in {obj!r}") from error
        if category < 0:  # the model's class head would reject it later, far from the annotation at fault
            raise DetrProcessingError(f"{where}: 'category_id' must be 0 or more, got {obj['category_id']!r}")
        boxes.append((x, y, w, h))
        classes.append(category)
        areas.append(area)
        crowd.append(iscrowd)

    corners, outcome = apply_box_rule(boxes, width, height)
    boxes = torch.from_numpy(corners)
    keep = (torch.tensor(crowd, dtype=torch.int64) == 0) & ~torch.from_numpy(np.isin(outcome, DROPPED))
    classes = torch.tensor(classes, dtype=torch.int64)[keep]
    target = {
        "image_id": torch.tensor([image_id], dtype=torch.int64),
        "class_labels": classes,
        "boxes": boxes[keep],
        "area": torch.tensor(areas, dtype=torch.float32)[keep],
        "iscrowd": torch.zeros_like(classes),
        "orig_size": torch.tensor([height, width], dtype=torch.int64),
    }
    if return_segmentation_masks:
        target["masks"] = coco_instance_masks(objects, height, width, f"image {index}")[keep]
    return target


def resize_target(target: dict, orig_size: tuple[int, int], new_size: tuple[int, int]) -> dict:
    """Scale absolute boxes and areas (and resample masks) from orig_size to new_size (both (h, w))."""
    ratio_h, ratio_w = new_size[0] / orig_size[0], new_size[1] / orig_size[1]
    target = dict(target, size=torch.tensor(new_size, dtype=torch.int64))
    if "masks" in target:
        target["masks"] = resize_masks(target["masks"], new_size)
    target["boxes"] = target["boxes"] * torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h], dtype=torch.float32)
    target["area"] = target["area"] * (ratio_w * ratio_h)
    return target


def pad_target_masks(target: dict, padded_size) -> dict:
    """Masks (if any) zero-padded at the bottom and right to the padded canvas, as the image is."""
    if "masks" not in target:
        return target
    return dict(target, masks=pad_masks(torch.as_tensor(target["masks"]), tuple(padded_size)))


def normalize_target_boxes(target: dict) -> dict:
    """Absolute (x0, y0, x1, y1) -> (cx, cy, w, h) relative to the target's `size`."""
    height, width = target["size"].tolist()
    boxes = box_convert(target["boxes"], "xyxy", "cxcywh")
    return dict(target, boxes=boxes / torch.tensor([width, height, width, height], dtype=torch.float32))


def target_to_padded_canvas(target: dict, image_size, padded_size, update_boxes: bool) -> dict:
    """Re-express boxes normalized over image_size (h, w) relative to the padded canvas (transformers' convention)."""
    height, width = image_size
    target = dict(target, size=torch.tensor(padded_size, dtype=torch.int64))
    if update_boxes:
        ratio_h, ratio_w = height / padded_size[0], width / padded_size[1]
        target["boxes"] = target["boxes"] * torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h], dtype=torch.float32)
    return target


# ------------------------------------------------------------------------------------------------ batching


def batch_images(images: list[torch.Tensor], padded_size=None, scale=None, bias=None, return_pixel_mask=True):
    """Write images into one zero-padded (B, C, H, W) float batch, each computed as `image * scale + bias`.

    scale/bias: (C, 1, 1) tensors or None. Returns (pixel_values, pixel_mask) with pixel_mask (B, H, W) int64,
    1 on image pixels and 0 on padding. The output is written once: no separate normalize, pad and stack copies.
    """
    sizes = [tuple(image.shape[-2:]) for image in images]
    if padded_size is None:
        padded_size = (max(h for h, _ in sizes), max(w for _, w in sizes))
    padded_h, padded_w = padded_size
    for index, (h, w) in enumerate(sizes):
        if h > padded_h or w > padded_w:
            raise DetrProcessingError(f"image {index} of size {h}x{w} (h x w) does not fit pad_size {padded_size}")
    channels = {image.shape[0] for image in images}
    if len(channels) != 1:
        raise DetrProcessingError(f"images have different channel counts {sorted(channels)}; cannot batch them")

    device = images[0].device
    pixel_values = torch.empty((len(images), channels.pop(), padded_h, padded_w), dtype=torch.float32, device=device)
    pixel_mask = torch.empty((len(images), padded_h, padded_w) if return_pixel_mask else (len(images), 0, 0),
                             dtype=torch.int64, device=device)
    # Each output element is written exactly once (fresh memory: its page faults are most of the cost).
    for out, mask, image, (h, w) in zip(pixel_values, pixel_mask, images, sizes):
        if scale is None:
            out[:, :h, :w].copy_(image)
        else:
            torch.addcmul(bias, image, scale, out=out[:, :h, :w])  # uint8 promoted to float on the fly
        out[:, h:].zero_()
        out[:, :h, w:].zero_()
        if return_pixel_mask:
            mask[:h, :w].fill_(1)
            mask[h:].zero_()
            mask[:h, w:].zero_()
    return pixel_values, (pixel_mask if return_pixel_mask else None)


def output_size(image_size: tuple[int, int], size: SizeDict) -> tuple[int, int]:
    """Target (h, w) for one of the `size` forms transformers' DETR processor accepts."""
    if size.shortest_edge:
        return get_size_with_aspect_ratio(image_size, size.shortest_edge, size.longest_edge)
    if size.max_height and size.max_width:
        return get_image_size_for_max_height_width(image_size, size.max_height, size.max_width)
    if size.height and size.width:
        return size.height, size.width
    raise DetrProcessingError(
        "size must have 'shortest_edge' (and optionally 'longest_edge'), 'max_height' and 'max_width', "
        f"or 'height' and 'width'; got {dict(size)}"
    )


def absolute_corners(pred_boxes: torch.Tensor, target_sizes) -> torch.Tensor:
    """(B, Q, 4) normalized (cx, cy, w, h) -> (x0, y0, x1, y1), in pixels of target_sizes ((B, 2) as (h, w))."""
    boxes = box_convert(pred_boxes.float(), "cxcywh", "xyxy")
    if target_sizes is None:
        return boxes
    sizes = torch.as_tensor(
        target_sizes.tolist() if isinstance(target_sizes, torch.Tensor) else target_sizes, dtype=torch.float32
    )
    if sizes.shape != (len(boxes), 2):
        raise DetrProcessingError(
            f"target_sizes must hold one (height, width) per image: expected shape ({len(boxes)}, 2), "
            f"got {tuple(sizes.shape)}"
        )
    height, width = sizes.to(boxes.device).unbind(1)
    return boxes * torch.stack([width, height, width, height], dim=1)[:, None, :]


def _logits_and_boxes(outputs) -> tuple[torch.Tensor, torch.Tensor]:
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    boxes = outputs["pred_boxes"] if isinstance(outputs, dict) else outputs.pred_boxes
    if logits.ndim != 3 or boxes.ndim != 3 or boxes.shape[-1] != 4 or logits.shape[:2] != boxes.shape[:2]:
        raise DetrProcessingError(
            f"expected logits (B, Q, C) and pred_boxes (B, Q, 4), got {tuple(logits.shape)} and {tuple(boxes.shape)}"
        )
    return logits, boxes


# ----------------------------------------------------------------------------------------------- processors


class DetrImageProcessor(TorchvisionBackend):
    r"""
    Prepares images and COCO detection annotations for DETR and turns its outputs into detections.

    Resize (shortest edge 800, longest 1333 by default; also `{"height", "width"}` and `{"max_height",
    "max_width"}`), rescale by 1/255, normalize with ImageNet mean/std, pad to the largest image of the batch
    (or `pad_size`) with a `pixel_mask`. Images may be PIL images, numpy arrays or torch tensors ((H, W),
    (C, H, W) or (H, W, C); gray and RGBA converted to RGB), file paths or encoded bytes (EXIF orientation
    applied), single or in a list. Annotation conventions are in this module's docstring.
    """

    valid_kwargs = DetrImageProcessorKwargs
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    format = "coco_detection"
    do_convert_rgb = True
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_pad = True
    do_convert_annotations = True
    normalize_boxes_to_padded_image = False
    size = {"shortest_edge": 800, "longest_edge": 1333}
    default_to_square = False
    model_input_names = ["pixel_values", "pixel_mask"]

    def __init__(self, **kwargs) -> None:
        # Older configs (e.g. facebook/detr-resnet-50's) say `size: 800, max_size: 1333, pad_and_return_pixel_mask`.
        kwargs.setdefault("do_pad", kwargs.pop("pad_and_return_pixel_mask", self.do_pad))
        size, max_size = kwargs.pop("size", None), kwargs.pop("max_size", None)
        if size is not None or max_size is not None:
            size = size if size is not None else self.size["shortest_edge"]
            kwargs["size"] = get_size_dict(size, max_size=max_size, default_to_square=False)
        super().__init__(**kwargs)

    def resize(self, image: torch.Tensor, size: SizeDict, resample=None, **kwargs) -> torch.Tensor:
        """Resize one (C, H, W) image to the size `size` asks for (bilinear with antialiasing by default)."""
        resample = self.resample if resample is None else resample
        interpolation = pil_torch_interpolation_mapping.get(resample, resample)
        return tvF.resize(image, list(output_size(tuple(image.shape[-2:]), size)), interpolation=interpolation,
                          antialias=True)

    def _affine(self, do_rescale, rescale_factor, do_normalize, image_mean, image_std, channels, device):
        """Rescale then normalize as one `x * scale + bias`, per channel (C, 1, 1); (None, None) for identity."""
        if not (do_rescale or do_normalize):
            return None, None
        scale = torch.full((channels, 1, 1), rescale_factor if do_rescale else 1.0, dtype=torch.float32)
        bias = torch.zeros((channels, 1, 1), dtype=torch.float32)
        if do_normalize:
            mean = torch.as_tensor(image_mean, dtype=torch.float32).reshape(-1, 1, 1)
            std = torch.as_tensor(image_std, dtype=torch.float32).reshape(-1, 1, 1)
            if mean.numel() not in (1, channels) or std.numel() not in (1, channels):
                raise DetrProcessingError(
                    f"image_mean/image_std have {mean.numel()}/{std.numel()} values for {channels}-channel images"
                )
            scale, bias = scale / std, -mean / std
        return scale.expand(channels, 1, 1).to(device), bias.expand(channels, 1, 1).to(device)

    def preprocess(self, images, annotations=None, return_segmentation_masks: bool | None = None,
                   masks_path: str | os.PathLike | None = None, **kwargs) -> BatchFeature:
        r"""
        Args:
            images: one image or a list (PIL, numpy, torch, path or bytes).
            annotations (`dict` or `list[dict]`, *optional*): COCO annotations (see `format`), one per image.
            return_segmentation_masks (`bool`, *optional*): add `masks` (N, H, W) bool to the labels, at the
                processed (resized and padded) size; the default is yes for `format="coco_panoptic"`, no for
                COCO detection (whose objects then need `segmentation` polygons or RLE).
            masks_path (`str`, *optional*): the folder of the panoptic PNGs named by the annotations' `file_name`.
            **kwargs: any processor attribute, overriding it for this call (`size`, `do_pad`, `pad_size`,
                `return_tensors`, ...).

        Returns:
            `BatchFeature` with `pixel_values` (B, 3, H, W), `pixel_mask` (B, H, W) when padding and, given
            annotations, `labels`: per image `class_labels`, `boxes` (normalized cx, cy, w, h), `area`, `iscrowd`,
            `orig_size`, `size` (h, w) and `image_id` (and `masks`, see above). Panoptic segments keep their
            `iscrowd` flag and take their boxes from their masks.
        """
        return super().preprocess(images, annotations, return_segmentation_masks, masks_path, **kwargs)

    def _preprocess_image_like_inputs(self, images, annotations=None, return_segmentation_masks=None,
                                      masks_path=None, **kwargs) -> BatchFeature:
        images = load_images(images, do_convert_rgb=kwargs.get("do_convert_rgb"), device=kwargs.get("device"))
        return self._preprocess(images, annotations, return_segmentation_masks, masks_path, **kwargs)

    def annotation_to_target(self, annotation, index: int, height: int, width: int, format: str,
                           return_segmentation_masks: bool | None = None, masks_path=None) -> dict:
        """One image's annotation -> target in original pixels (boxes absolute x0, y0, x1, y1)."""
        if format == "coco_panoptic":
            return coco_panoptic_to_target(annotation, index, height, width, masks_path,
                                           return_masks=return_segmentation_masks is not False)
        return coco_detection_to_target(annotation, index, height, width, bool(return_segmentation_masks))

    def _preprocess(
        self,
        images: list[torch.Tensor],
        annotations,
        return_segmentation_masks: bool | None,
        masks_path,
        do_resize: bool,
        size: SizeDict,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_pad: bool,
        pad_size: SizeDict | None,
        format: str,
        do_convert_annotations: bool,
        normalize_boxes_to_padded_image: bool,
        return_tensors,
        **kwargs,
    ) -> BatchFeature:
        targets = self.targets_of(images, annotations, getattr(format, "value", format), return_segmentation_masks,
                                  masks_path)
        if do_resize:
            images, targets = self.resize_with_targets(images, targets, size, resample)
        elif targets is not None:
            targets = [dict(t, size=t["orig_size"].clone()) for t in targets]
        if targets is not None and do_convert_annotations:
            targets = [normalize_target_boxes(target) for target in targets]
        scale, bias = self._affine(
            do_rescale, rescale_factor, do_normalize, image_mean, image_std, images[0].shape[0], images[0].device
        )
        if do_pad:
            data, targets = self.pad_with_targets(images, targets, pad_size, scale, bias, do_convert_annotations,
                                                  normalize_boxes_to_padded_image)
        else:
            if len({tuple(image.shape) for image in images}) > 1:
                raise DetrProcessingError(
                    "images have different sizes after resizing and do_pad=False; set do_pad=True to batch them"
                )
            data = {"pixel_values": batch_images(images, None, scale, bias, return_pixel_mask=False)[0]}

        encoded = BatchFeature(data, tensor_type=return_tensors)
        if targets is not None:
            encoded["labels"] = [BatchFeature(target, tensor_type=return_tensors) for target in targets]
        return encoded

    def targets_of(self, images, annotations, format: str, return_segmentation_masks, masks_path) -> list | None:
        """One target per image (original pixels), or None without annotations."""
        if format not in ("coco_detection", "coco_panoptic"):
            raise DetrProcessingError(
                f"annotation format {format!r} is not supported; use 'coco_detection' or 'coco_panoptic'"
            )
        if annotations is None:
            return None
        annotations = [annotations] if isinstance(annotations, dict) else list(annotations)
        if len(annotations) != len(images):
            raise DetrProcessingError(
                f"got {len(images)} images but {len(annotations)} annotations; give one annotation per image"
            )
        return [
            self.annotation_to_target(annotation, index, *image.shape[-2:], format, return_segmentation_masks,
                                      masks_path)
            for index, (image, annotation) in enumerate(zip(images, annotations))
        ]

    def resize_with_targets(self, images, targets, size: SizeDict, resample):
        """Resized images, and their targets' boxes, areas and masks with them."""
        orig_sizes = [tuple(image.shape[-2:]) for image in images]
        images = [self.resize(image, size, resample) for image in images]
        if targets is not None:
            targets = [resize_target(target, orig, tuple(image.shape[-2:]))
                       for target, orig, image in zip(targets, orig_sizes, images)]
        return images, targets

    def pad_with_targets(self, images, targets, pad_size: SizeDict | None, scale, bias, boxes_normalized: bool,
                         normalize_boxes_to_padded_image: bool):
        """{"pixel_values", "pixel_mask"} of the images padded bottom-right to one canvas, and the targets' masks
        padded alike (boxes moved to the canvas' frame when asked, transformers' convention)."""
        padded_size = (pad_size.height, pad_size.width) if pad_size is not None else None
        pixel_values, pixel_mask = batch_images(images, padded_size, scale, bias)
        if targets is not None:
            canvas = tuple(pixel_values.shape[-2:])
            targets = [pad_target_masks(target, canvas) for target in targets]
            if normalize_boxes_to_padded_image:
                targets = [target_to_padded_canvas(target, image.shape[-2:], canvas, boxes_normalized)
                           for target, image in zip(targets, images)]
        return {"pixel_values": pixel_values, "pixel_mask": pixel_mask}, targets

    def pad(
        self,
        images,
        annotations: list[dict] | None = None,
        return_pixel_mask: bool = True,
        return_tensors="pt",
        update_bboxes: bool | None = None,
        pad_size: dict | None = None,
    ) -> BatchFeature:
        """Pad already processed (C, H, W) images (tensors or arrays) to the batch's largest size or `pad_size`.

        Returns `pixel_values` (B, C, H, W), `pixel_mask` (B, H, W) and, given the images' `labels`, the labels,
        re-expressed on the padded canvas when `normalize_boxes_to_padded_image` is set (boxes only if
        `update_bboxes`, by default `do_convert_annotations`). A data collator's call.
        """
        images = [torch.as_tensor(image) for image in (images if isinstance(images, (list, tuple)) else [images])]
        for index, image in enumerate(images):
            if image.ndim != 3:
                raise DetrProcessingError(f"image {index} has shape {tuple(image.shape)}; pad expects (C, H, W)")
        if pad_size is not None:
            pad_size = get_size_dict(pad_size, param_name="pad_size")
            pad_size = (pad_size["height"], pad_size["width"])
        pixel_values, pixel_mask = batch_images(images, pad_size, return_pixel_mask=return_pixel_mask)
        data = {"pixel_values": pixel_values}
        if return_pixel_mask:
            data["pixel_mask"] = pixel_mask
        encoded = BatchFeature(data, tensor_type=return_tensors)
        if annotations is not None:
            if len(annotations) != len(images):
                raise DetrProcessingError(f"got {len(images)} images but {len(annotations)} annotations")
            update_bboxes = self.do_convert_annotations if update_bboxes is None else update_bboxes
            canvas = tuple(pixel_values.shape[-2:])
            annotations = [pad_target_masks(dict(a), canvas) for a in annotations]
            if self.normalize_boxes_to_padded_image:
                annotations = [
                    target_to_padded_canvas(a, image.shape[-2:], canvas, update_bboxes)
                    for a, image in zip(annotations, images)
                ]
            encoded["labels"] = [BatchFeature(dict(a), tensor_type=return_tensors) for a in annotations]
        return encoded

    def post_process_object_detection(self, outputs, threshold: float = 0.5, target_sizes=None) -> list[dict]:
        """DETR outputs -> per image `{"scores", "labels", "boxes"}`, boxes (x0, y0, x1, y1) in pixels.

        Softmax over classes, the last ("no object") class dropped, each query's best class kept if its score
        exceeds `threshold`. target_sizes: (B, 2) tensor or list of (height, width); None keeps boxes in [0, 1].
        """
        logits, pred_boxes = _logits_and_boxes(outputs)
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        boxes = absolute_corners(pred_boxes, target_sizes)
        return [
            {"scores": s[s > threshold], "labels": l[s > threshold], "boxes": b[s > threshold]}
            for s, l, b in zip(scores, labels, boxes)
        ]

    # Segmentation post-processing: transformers' signatures and outputs (see segmentation_postprocessing.py).
    # DETR scores queries by softmax with a "no object" class; Deformable DETR's subclass by sigmoid.
    sigmoid_scores = False

    def post_process_panoptic_segmentation(
        self, outputs, threshold: float = 0.5, mask_threshold: float = 0.5, overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse: set[int] | None = None, target_sizes=None,
    ) -> list[dict]:
        """Segmentation outputs (`logits`, `pred_masks`) -> per image `{"segmentation", "segments_info"}`.

        `segmentation` (H, W) int32 holds segment ids (0: no segment), at `target_sizes[i]` (height, width) or the
        masks' size; `segments_info` lists `{"id", "label_id", "was_fused", "score"}` per kept query (queries of a
        class in `label_ids_to_fuse`, e.g. stuff, share one id). An image without a query scoring above
        `threshold` gets a float map of -1 and no segments, as in transformers.
        """
        return post_process_panoptic_segmentation(
            outputs, threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse, target_sizes,
            self.sigmoid_scores,
        )

    def post_process_instance_segmentation(
        self, outputs, threshold: float = 0.5, mask_threshold: float = 0.5, overlap_mask_area_threshold: float = 0.8,
        target_sizes=None, return_coco_annotation: bool | None = False,
    ) -> list[dict]:
        """Panoptic post-processing without fusing; `return_coco_annotation` gives the map as per-id run lengths."""
        return post_process_instance_segmentation(
            outputs, threshold, mask_threshold, overlap_mask_area_threshold, target_sizes, return_coco_annotation,
            self.sigmoid_scores,
        )

    def post_process_semantic_segmentation(
        self, outputs, target_sizes=None, return_segmentation_scores: bool = False,
    ) -> list:
        """Per image an (H, W) map of class ids (or, with `return_segmentation_scores`, an output holding it and
        the (C, H, W) class scores): per pixel, the class maximizing sum_q P(class | q) * P(pixel in mask q)."""
        return post_process_semantic_segmentation(
            outputs, target_sizes, return_segmentation_scores, self.sigmoid_scores
        )


class DeformableDetrImageProcessor(DetrImageProcessor):
    """DETR's processor with Deformable DETR's post-processing: sigmoid scores, top-k over queries x classes."""

    sigmoid_scores = True

    def post_process_object_detection(
        self, outputs, threshold: float = 0.5, target_sizes=None, top_k: int = 100
    ) -> list[dict]:
        """Deformable DETR outputs -> per image `{"scores", "labels", "boxes"}`, boxes (x0, y0, x1, y1) in pixels.

        Each class is an independent sigmoid (no "no object" class), so a query may yield several detections:
        the `top_k` (query, class) pairs by score are kept, as the paper evaluates, then those above `threshold`.
        """
        logits, pred_boxes = _logits_and_boxes(outputs)
        batch_size, _, num_classes = logits.shape
        prob = logits.sigmoid().reshape(batch_size, -1)  # (B, Q * C)
        scores, index = prob.topk(min(top_k, prob.shape[1]), dim=1)
        query, labels = index // num_classes, index % num_classes
        boxes = absolute_corners(pred_boxes, target_sizes)
        boxes = boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
        return [
            {"scores": s[s > threshold], "labels": l[s > threshold], "boxes": b[s > threshold]}
            for s, l, b in zip(scores, labels, boxes)
        ]


__all__ = ["DetrImageProcessor", "DeformableDetrImageProcessor", "DetrProcessingError"]
