"""The MODEL argument of the deploy commands: a save_pretrained folder, a Hub id, or a preset name (random weights,
for trying an architecture or measuring it)."""
from __future__ import annotations

from pathlib import Path


def is_deformable(model) -> bool:
    """Deformable DETR scores each class with a sigmoid (no "no object" class); DETR with a softmax."""
    return "deformable" in model.config.model_type


def load_model(name: str, device: str = "cpu"):
    """(model in eval mode, its image processor)."""
    from detrkit.modeling import PRESETS, DeformableDetrForObjectDetection, DetrForObjectDetection, config_from_preset
    from detrkit.processing import DeformableDetrImageProcessor, DetrImageProcessor
    from detrkit.training.pretrained import load_pretrained

    if name in PRESETS and not Path(name).exists():
        config = config_from_preset(name, use_pretrained_backbone=False)
        deformable = "deformable" in config.model_type
        model_class = DeformableDetrForObjectDetection if deformable else DetrForObjectDetection
        processor = DeformableDetrImageProcessor() if deformable else DetrImageProcessor()
        return model_class(config).to(device).eval(), processor
    return load_pretrained(name, device)
