"""Batching for detection: pad images to the batch's largest, keep the targets as a list (one dict per image)."""
from __future__ import annotations

__all__ = ["DetectionCollator"]


class DetectionCollator:
    """``collate_fn`` for a DataLoader or ``data_collator`` for HF Trainer (a top-level class, so it pickles).

    Takes items ``{"pixel_values": (3, H_i, W_i), "labels": dict}`` and returns ``{"pixel_values": (B, 3, H, W),
    "pixel_mask": (B, H, W), "labels": [dict, ...]}`` padded by the processor's ``pad``, which also re-expresses
    the boxes when the processor normalizes them to the padded canvas.
    """

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, batch: list[dict]) -> dict:
        if not batch:
            raise ValueError("cannot collate an empty batch")
        missing = [i for i, item in enumerate(batch) if "pixel_values" not in item]
        if missing:
            raise ValueError(f"batch items {missing} have no 'pixel_values' (keys: {sorted(batch[missing[0]])})")
        labels = [item["labels"] for item in batch] if all("labels" in item for item in batch) else None
        encoded = self.processor.pad([item["pixel_values"] for item in batch], annotations=labels,
                                     return_tensors="pt")
        out = {"pixel_values": encoded["pixel_values"], "pixel_mask": encoded["pixel_mask"]}
        if labels is not None:
            out["labels"] = [dict(label) for label in encoded["labels"]]
        return out
