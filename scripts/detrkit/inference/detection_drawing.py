"""Detections drawn onto images (torchvision's draw_bounding_boxes), alone or as a grid of several images."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, make_grid

from detrkit.data.images import open_image

from .detections import detect


def draw_detections(image: Image.Image, detections: dict, id2label: dict) -> torch.Tensor:
    """(3, H, W) uint8 image with labelled boxes; small images are upscaled first so the text stays legible."""
    scale = max(1, round(384 / max(image.size)))
    canvas = F.pil_to_tensor(image.convert("RGB"))
    if scale > 1:
        canvas = F.resize(canvas, [image.height * scale, image.width * scale], antialias=False)
    labels = [f"{id2label.get(int(l), int(l))} {float(s):.2f}" for l, s in zip(detections["labels"], detections["scores"])]
    if not labels:
        return canvas
    return draw_bounding_boxes(canvas, detections["boxes"].float() * scale, labels=labels, colors="yellow", width=2)


def save_grid(drawings: list[torch.Tensor], path: str | Path, columns: int = 4) -> None:
    size = max(max(d.shape[-2:]) for d in drawings)
    padded = [F.pad(d, [0, 0, size - d.shape[-1], size - d.shape[-2]]) for d in drawings]
    grid = make_grid(padded, nrow=min(columns, len(padded)), padding=4, pad_value=255)
    F.to_pil_image(grid).save(path)


def draw_eval_predictions(model, processor, data, path: str | Path, threshold: float | None = None, device="cpu",
                          count: int = 8) -> None:
    """Predictions on the first `count` evaluation images, in one PNG (threshold: default the model family's)."""
    records = data.eval_records.records[:count]
    images = [open_image(r.image).convert("RGB") for r in records]
    id2label = model.config.id2label
    detections = detect(model, processor, images, threshold, device)
    save_grid([draw_detections(im, d, id2label) for im, d in zip(images, detections)], path)
