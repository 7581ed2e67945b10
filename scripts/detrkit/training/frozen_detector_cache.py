"""The paper's second segmentation step on cached detector outputs.

With the detector frozen (eval mode, no gradients) and the training images fixed (no augmentation), everything the
mask head reads from an image, the decoder outputs, the memory level, the backbone maps and the matching of the
queries to the targets, is the same at every epoch. So it is computed once per image and the head trains on it:
the same losses and gradients as running the detector at every step, at the cost of the head alone, which is what
makes the head's many steps affordable (the paper trains it for 25 COCO epochs).

Images are run in batches of equal size, so no image is padded for another; a training batch pads the cached maps
of images of different sizes with zeros (marked invalid for the attention map), where the uncached run would have
run the backbone on the padded images. Only matched queries are kept, the only ones the mask losses read.
"""
from __future__ import annotations

import os
from collections import defaultdict

import torch

from detrkit.errors import UsageError


def _pad_to(tensor: torch.Tensor, size) -> torch.Tensor:
    """Zero (False) padding of the last two dimensions, bottom and right, to `size`, as the processor pads."""
    padded = tensor.new_zeros(*tensor.shape[:-2], *size)
    padded[..., :tensor.shape[-2], :tensor.shape[-1]] = tensor
    return padded


class FrozenDetectorCache(torch.utils.data.Dataset):
    """One item per training image: the mask head's inputs for its matched queries and their target masks."""

    def __init__(self, items: list[dict]):
        self.items = items

    @classmethod
    @torch.no_grad()
    def build(cls, model, dataset, collator, batch_size: int, max_bytes: float, log=print):
        """Run the frozen detector once over `dataset` (items {"pixel_values", "labels"}). Raises UsageError when
        the cache would exceed `max_bytes` (estimated from the first batch)."""
        if not model.detector_frozen:
            raise UsageError("cached detector outputs need a frozen detector (freeze_detector: true)")
        model.eval()
        device = next(model.parameters()).device
        pending, items = defaultdict(list), []  # size -> items waiting for a full batch of that size

        def run(batch_items):
            items.extend(cls._encode(model, collator(batch_items), device))
            if len(items) == len(batch_items):  # the first batch: check the size of the whole cache
                estimate = sum(_nbytes(item) for item in items) / len(items) * len(dataset)
                if estimate > max_bytes:
                    raise UsageError(f"caching the frozen detector's outputs would take {estimate / 2**30:.1f} GiB "
                                     f"(limit {max_bytes / 2**30:.1f} GiB): set cache_detector_outputs: false to "
                                     "run the detector at every step")

        for index in range(len(dataset)):  # each item read once; batches of one size, so nothing is padded
            item = dataset[index]
            group = pending[tuple(item["pixel_values"].shape[-2:])]
            group.append(item)
            if len(group) == batch_size:
                run(group[:])
                group.clear()
        for group in pending.values():
            if group:
                run(group)
        log(f"cached the frozen detector's outputs for {len(items)} images "
            f"({sum(_nbytes(item) for item in items) / 2**20:.0f} MiB)")
        return cls(items)

    @staticmethod
    def _encode(model, batch, device) -> list[dict]:
        labels = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in batch["labels"]]
        detection, inputs = model.detect(batch["pixel_values"].to(device), batch["pixel_mask"].to(device))
        items = []
        for image, (src, tgt) in enumerate(model.match(detection, labels)):
            items.append({
                "queries": inputs.queries[image, src.to(device)].cpu(),
                "memory": inputs.memory[image].cpu(), "valid": inputs.valid[image].cpu(),
                "features": inputs.features[image].cpu(), "fpn": [f[image].cpu() for f in inputs.fpn],
                "masks": labels[image]["masks"][tgt.to(device)].cpu(),
                "class_labels": labels[image]["class_labels"][tgt.to(device)].cpu(),
            })
        return items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def _nbytes(item: dict) -> int:
    tensors = [v for v in item.values() if torch.is_tensor(v)] + item["fpn"]
    return sum(t.numel() * t.element_size() for t in tensors)


def collate_cached(items: list[dict]):
    """A batch of cached items -> (MaskHeadInputs fields as a dict, labels, indices), padded to the largest."""
    def stacked(get):
        size = [max(get(item).shape[d] for item in items) for d in (-2, -1)]
        return torch.stack([_pad_to(get(item), size) for item in items])

    count = max(1, max(len(item["queries"]) for item in items))
    queries = torch.zeros(len(items), count, items[0]["queries"].shape[-1], dtype=items[0]["queries"].dtype)
    for image, item in enumerate(items):
        queries[image, :len(item["queries"])] = item["queries"]
    fields = {"queries": queries, "memory": stacked(lambda i: i["memory"]),
              "valid": stacked(lambda i: i["valid"]),
              "features": stacked(lambda i: i["features"]),
              "fpn": [stacked(lambda i, level=level: i["fpn"][level]) for level in range(len(items[0]["fpn"]))]}
    labels = [{"masks": item["masks"], "class_labels": item["class_labels"]} for item in items]
    mask_size = [max(label["masks"].shape[d] for label in labels) for d in (-2, -1)]
    for label in labels:
        label["masks"] = _pad_to(label["masks"], mask_size)
    indices = [(torch.arange(len(item["queries"])), torch.arange(len(item["queries"]))) for item in items]
    return fields, labels, indices


def head_loss(model, fields: dict, labels: list[dict], indices) -> tuple[torch.Tensor, dict]:
    """The weighted mask loss and its terms for one cached batch (the matched queries' masks only)."""
    from detrkit.modeling.modeling_detr_segmentation import MaskHeadInputs

    device = next(model.parameters()).device
    inputs = MaskHeadInputs(fields["queries"].to(device), fields["memory"].to(device), fields["valid"].to(device),
                            fields["features"].to(device), [f.to(device) for f in fields["fpn"]])
    masks = model.predict_masks(inputs)
    matched = torch.cat([masks[image, :len(src)] for image, (src, _) in enumerate(indices)])
    labels = [{k: v.to(device) for k, v in label.items()} for label in labels]
    return model.mask_loss(matched, labels, indices)


def default_max_bytes() -> float:
    """A quarter of the machine's memory (or 8 GiB when it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


__all__ = ["FrozenDetectorCache", "collate_cached", "default_max_bytes", "head_loss"]
