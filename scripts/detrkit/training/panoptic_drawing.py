"""The panoptic picture: each predicted segment of a few evaluation images in its own colour, labelled, beside the
same model's detections."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .segmentation_data import SegmentationData


def draw_panoptic(image, segmentation: torch.Tensor, segments_info: list[dict], id2label: dict) -> torch.Tensor:
    """(3, H, W) uint8: the image with each segment filled in its own colour and labelled at its centre."""
    from PIL import ImageDraw
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_segmentation_masks

    scale = max(1, round(384 / max(image.size)))
    canvas = TF.pil_to_tensor(image.convert("RGB"))
    segmentation = segmentation[None, None].float()
    if scale > 1:
        canvas = TF.resize(canvas, [image.height * scale, image.width * scale], antialias=False)
        segmentation = F.interpolate(segmentation, scale_factor=scale, mode="nearest")
    segmentation = segmentation[0, 0].long()
    if not segments_info:
        return canvas
    masks = torch.stack([segmentation == s["id"] for s in segments_info])
    palette = [tuple(int(255 * c) for c in colour(i)) for i in range(len(segments_info))]
    canvas = draw_segmentation_masks(canvas, masks, alpha=0.6, colors=palette)
    picture = TF.to_pil_image(canvas)
    draw = ImageDraw.Draw(picture)
    for segment, mask in zip(segments_info, masks):
        if mask.any():
            ys, xs = mask.nonzero(as_tuple=True)
            text = str(id2label.get(int(segment["label_id"]), segment["label_id"]))
            draw.text((float(xs.float().mean()), float(ys.float().mean())), text, fill="white", anchor="mm",
                      stroke_width=2, stroke_fill="black")
    return TF.pil_to_tensor(picture)


def colour(index: int) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 0.95)  # golden-ratio hues: neighbours differ


def save_pictures(model, processor, data: SegmentationData, predictions: dict, output: Path, threshold: float,
                  device, count: int = 8) -> None:
    """panoptic.png (each predicted segment in its own colour, labelled) and, beside it, predictions.png (the same
    model's detections, boxes and scores) for the first `count` evaluation images."""
    from detrkit.data.images import open_image

    from detrkit.inference.detections import detect
    from detrkit.inference.detection_drawing import draw_detections, save_grid

    records = list(data.eval_records)[:count]
    images = [open_image(record.image).convert("RGB") for record in records]
    id2label = model.config.id2label
    save_grid([draw_panoptic(image, predictions[r.image_id]["segmentation"], predictions[r.image_id]["segments_info"],
                             id2label) for image, r in zip(images, records)], output / "panoptic.png")
    detections = detect(model, processor, images, threshold, device)
    save_grid([draw_detections(image, d, id2label) for image, d in zip(images, detections)], output / "predictions.png")


__all__ = ["colour", "draw_panoptic", "save_pictures"]
