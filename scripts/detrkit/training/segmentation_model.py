"""The segmentation model around a detector (DETR's mask head of the same family), and the class rows a new class
head keeps from its checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch

from detrkit.errors import UsageError


def segmentation_model(detector, freeze_detector: bool):
    """The segmentation model of the same family around `detector` (a DETR or Deformable DETR detector)."""
    from detrkit import modeling

    family = {modeling.DetrForObjectDetection: modeling.DetrForSegmentation,
              modeling.DeformableDetrForObjectDetection: modeling.DeformableDetrForSegmentation}
    for detector_class, segmentation_class in family.items():
        if isinstance(detector, detector_class):
            return segmentation_class.from_detector(detector, freeze_detector=freeze_detector)
    raise UsageError(f"--task panoptic|instance needs a DETR or Deformable DETR detector, got "
                     f"{type(detector).__name__}")


def carry_over_class_rows(detector, checkpoint: Path, log=print) -> int:
    """After the class head was replaced for new classes, start the rows of the classes the checkpoint already
    knew (same name) from its trained rows, so the first step learns the new classes (the stuff) rather than all
    of them again. DETR's last row ("no object") carries over too. Returns how many classes were carried over."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    weights_file = checkpoint / "model.safetensors"
    if not (weights_file.is_file() and (checkpoint / "config.json").is_file()):
        return 0  # a Hub id or a sharded checkpoint: the new rows keep their initialisation
    old_names = {int(k): v for k, v in AutoConfig.from_pretrained(checkpoint).id2label.items()}
    if old_names == detector.config.id2label:
        return 0
    state = load_file(str(weights_file))
    old_index = {name: i for i, name in old_names.items()}
    pairs = [(new, old_index[name]) for new, name in detector.config.id2label.items() if name in old_index]
    if not pairs:
        return 0
    new_rows, old_rows = (torch.tensor(r) for r in zip(*pairs))
    with torch.no_grad():
        for name, param in detector.named_parameters():
            old = state.get(name)
            if old is None or old.shape == param.shape or not any(k in name for k in ("class_embed", "class_labels")):
                continue
            param[new_rows] = old[old_rows].to(param.dtype)
            if param.shape[0] == len(detector.config.id2label) + 1:  # DETR's "no object" row
                param[-1] = old[-1].to(param.dtype)
    log(f"class head: {len(pairs)} of {len(detector.config.id2label)} classes start from the checkpoint's rows")
    return len(pairs)


__all__ = ["carry_over_class_rows", "segmentation_model"]
