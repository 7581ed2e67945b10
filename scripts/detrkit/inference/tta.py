"""Test-time augmentation (TTA) for detection: horizontal flip x multiple scales, merged by class-wise NMS.

Each batch the processor prepared (images resized and padded, `pixel_mask` marking real pixels) is seen in
several views: every scale factor in `scales` (each image's real area resized by that factor, then re-padded),
each also mirrored left-right when `flip` is set. The model's boxes are normalized to each image's real area, so
a view's boxes map back by undoing the mirror only (cx -> 1 - cx); every view is then post-processed by the
processor into detections in original pixels.

Merge rule: the detections of all views are pooled per image and reduced by class-wise non-maximum suppression
(`torchvision.ops.batched_nms`, IoU `iou_threshold`): among overlapping boxes of one class the highest-scoring
survives with its own score and box. At most `max_detections` survive per image (COCO's 100).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms


@dataclass(frozen=True)
class TTAConfig:
    scales: tuple[float, ...] = (0.8, 1.0, 1.2)  # factors of the size the processor chose
    flip: bool = True
    iou_threshold: float = 0.6
    max_detections: int = 100

    def __post_init__(self):
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"TTA scales must be positive factors, got {self.scales}")
        if not 0 < self.iou_threshold <= 1:
            raise ValueError(f"TTA iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.max_detections < 1:
            raise ValueError(f"TTA max_detections must be >= 1, got {self.max_detections}")

    @property
    def views(self) -> list[tuple[float, bool]]:
        return [(scale, flipped) for scale in self.scales for flipped in ((False, True) if self.flip else (False,))]


def _real_sizes(pixel_mask: torch.Tensor) -> list[tuple[int, int]]:
    """(height, width) of each image's real area: images sit top-left in the padded batch."""
    return [(int(m.any(1).sum()), int(m.any(0).sum())) for m in pixel_mask.bool()]


def augment_batch(pixel_values: torch.Tensor, pixel_mask: torch.Tensor, scale: float, flipped: bool):
    """One view of a padded batch: each image's real area resized by `scale` and optionally mirrored, re-padded
    top-left. Normalization is a per-channel affine map, so resizing normalized pixels equals normalizing
    resized ones."""
    images = []
    for image, (height, width) in zip(pixel_values, _real_sizes(pixel_mask)):
        real = image[:, :height, :width]
        if scale != 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            real = F.interpolate(real[None], size=size, mode="bilinear", align_corners=False,
                                 antialias=scale < 1.0)[0]
        images.append(real.flip(-1) if flipped else real)
    height, width = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    batch = pixel_values.new_zeros(len(images), pixel_values.shape[1], height, width)
    mask = pixel_mask.new_zeros(len(images), height, width)
    for i, image in enumerate(images):
        batch[i, :, :image.shape[1], :image.shape[2]] = image
        mask[i, :image.shape[1], :image.shape[2]] = 1
    return batch, mask


def unflip_boxes(pred_boxes: torch.Tensor) -> torch.Tensor:
    """Normalized (cx, cy, w, h) predicted on a mirrored image -> the same boxes on the original."""
    return torch.cat([1 - pred_boxes[..., :1], pred_boxes[..., 1:]], -1)


def merge_detections(views: list[dict], iou_threshold: float, max_detections: int) -> dict:
    """Pool one image's detections from every view and keep class-wise NMS survivors, best first."""
    scores = torch.cat([v["scores"] for v in views])
    labels = torch.cat([v["labels"] for v in views])
    boxes = torch.cat([v["boxes"] for v in views])
    keep = batched_nms(boxes.float(), scores.float(), labels, iou_threshold)[:max_detections]
    return {"scores": scores[keep], "labels": labels[keep], "boxes": boxes[keep]}


@torch.no_grad()
def predict_batch_tta(model, pixel_values, pixel_mask, target_sizes, processor, config: TTAConfig) -> list[dict]:
    """Detections (original pixels, threshold 0) of one batch under every view, merged per image."""
    per_image = [[] for _ in range(len(pixel_values))]
    for scale, flipped in config.views:
        batch, mask = augment_batch(pixel_values, pixel_mask, scale, flipped)
        outputs = model(pixel_values=batch, pixel_mask=mask)
        boxes = unflip_boxes(outputs.pred_boxes) if flipped else outputs.pred_boxes
        detections = processor.post_process_object_detection(
            SimpleNamespace(logits=outputs.logits, pred_boxes=boxes), threshold=0.0, target_sizes=target_sizes)
        for views, detection in zip(per_image, detections):
            views.append(detection)
    return [merge_detections(views, config.iou_threshold, config.max_detections) for views in per_image]


@torch.no_grad()
def predict_tta(model, loader, processor, config: TTAConfig | None = None) -> dict[int, dict]:
    """`coco_evaluation.predict` with TTA: image_id -> {"scores", "labels", "boxes"} in original pixels."""
    config = config or TTAConfig()
    model.eval()
    results = {}
    for batch in loader:
        sizes = torch.stack([t["orig_size"] for t in batch["labels"]]).to(batch["pixel_values"].device)
        mask = batch.get("pixel_mask")
        if mask is None:
            mask = torch.ones_like(batch["pixel_values"][:, 0], dtype=torch.long)
        detections = predict_batch_tta(model, batch["pixel_values"], mask, sizes, processor, config)
        for target, detection in zip(batch["labels"], detections):
            results[int(target["image_id"])] = {k: v.float().cpu() for k, v in detection.items()}
    return results
