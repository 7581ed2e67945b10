"""Load a trained detector and its processor from a `save_pretrained` folder or a Hub id (for evaluate/predict)."""
from __future__ import annotations

from pathlib import Path

from .models import looks_like_path


def load_pretrained(model_id: str, device: str = "cpu", trust_remote_code: bool = False):
    """(model in eval mode, image processor). detrkit's classes and transformers' own DETR / Deformable DETR load
    without remote code; a repository whose code must run needs `trust_remote_code=True` from the user."""
    import detrkit.modeling  # noqa: F401  (registers detrkit's configs with the Auto classes)
    import detrkit.processing  # noqa: F401
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    local = Path(model_id).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise FileNotFoundError(f"{model_id}: no config.json inside; not a save_pretrained model folder")
    if not local.exists() and looks_like_path(model_id):
        raise FileNotFoundError(f"{model_id}: no such folder")
    source = str(local) if local.exists() else model_id
    remote = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        model = AutoModelForObjectDetection.from_pretrained(source, **remote).to(device).eval()
        processor = AutoImageProcessor.from_pretrained(source, **remote)
    except ValueError as error:
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise ValueError(f"{model_id} needs its own code from the Hub to load; if you trust that repository, "
                             "add --trust-remote-code") from None
        raise ValueError(f"{model_id}: cannot load it ({' '.join(str(error).split())[:300]})") from None
    except OSError as error:
        raise OSError(f"{model_id}: cannot load it as a model ({' '.join(str(error).split())[:300]})") from None
    if not hasattr(processor, "post_process_object_detection"):
        raise TypeError(f"{model_id}: its image processor ({type(processor).__name__}) has no "
                        "post_process_object_detection; not a detection checkpoint")
    return model, processor


def score_threshold(model) -> float:
    """The default drawing threshold for the model's score type: DETR's softmax scores run high, Deformable
    DETR's sigmoid focal scores lower."""
    sigmoid = "deformable" in str(getattr(model.config, "model_type", ""))
    return 0.3 if sigmoid else 0.5
