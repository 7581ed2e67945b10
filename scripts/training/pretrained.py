"""Load a trained detector and its processor from a `save_pretrained` folder or a Hub id (for evaluate/predict)."""
from __future__ import annotations

from pathlib import Path


def load_pretrained(model_id: str, device: str = "cpu"):
    """(model in eval mode, image processor). detrkit's classes load without remote code; other Hub repos
    (transformers' own DETR checkpoints, or detrkit's code shipped with the weights) load through the Auto classes."""
    import detrkit.modeling  # noqa: F401  (registers detrkit's configs with the Auto classes)
    import detrkit.processing  # noqa: F401
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    local = Path(model_id).expanduser()
    source = str(local) if (local / "config.json").exists() else model_id
    remote = {} if local.exists() else {"trust_remote_code": True}
    model = AutoModelForObjectDetection.from_pretrained(source, **remote).to(device).eval()
    processor = AutoImageProcessor.from_pretrained(source, **remote)
    if not hasattr(processor, "post_process_object_detection"):
        raise TypeError(f"{model_id}: its image processor ({type(processor).__name__}) has no "
                        "post_process_object_detection; not a detection checkpoint")
    return model, processor
