"""Detections of PIL images (`detect`) and as JSON-ready dicts (`to_json`): what `detrkit predict` and the video
predictor write."""
from __future__ import annotations

import torch
from PIL import Image

from detrkit.families import family_of


@torch.no_grad()
def detect(model, processor, images: list[Image.Image], threshold: float | None = None, device="cpu") -> list[dict]:
    """Per image {"scores", "labels", "boxes" (x0, y0, x1, y1) pixels} above `threshold` (default: the model
    family's drawing threshold)."""
    threshold = family_of(model).drawing_threshold if threshold is None else threshold
    model.eval()
    inputs = processor(images=images, return_tensors="pt").to(device)
    outputs = model(**inputs)
    sizes = torch.tensor([[im.height, im.width] for im in images], device=device)
    return [{k: v.cpu() for k, v in d.items()}
            for d in processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)]


def to_json(detections: dict, id2label: dict) -> list[dict]:
    return [{"label": id2label.get(int(label), str(int(label))), "label_id": int(label), "score": round(float(score), 4),
             "box": {"xmin": round(float(b[0]), 2), "ymin": round(float(b[1]), 2),
                     "xmax": round(float(b[2]), 2), "ymax": round(float(b[3]), 2)}}
            for score, label, b in zip(detections["scores"], detections["labels"], detections["boxes"])]
