"""A detector and its image processor, ready for inference, from whatever names it: the MODEL argument of
`detrkit evaluate / predict / export / visualize / demo`.

MODEL is a `save_pretrained` folder, a Hub id (detrkit's or transformers' own DETR / Deformable DETR checkpoints)
or a detrkit preset name (random weights, for trying an architecture or measuring it).
"""
from __future__ import annotations

from pathlib import Path


def looks_like_path(spec: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else with a slash, or starting like a path, is a path."""
    return spec.startswith(("/", ".", "~")) or spec.endswith("/") or spec.count("/") > 1 or "\\" in spec


def load_for_inference(name_or_path: str, device: str = "cpu", trust_remote_code: bool = False):
    """(model in eval mode, its image processor). detrkit's classes and transformers' own DETR / Deformable DETR
    load without remote code; a repository whose code must run needs `trust_remote_code=True` from the user."""
    from detrkit.modeling import PRESETS

    if name_or_path in PRESETS and not Path(name_or_path).exists():
        return preset_for_inference(name_or_path, device)
    return from_pretrained(name_or_path, device, trust_remote_code)


def preset_for_inference(name: str, device: str = "cpu"):
    """A preset's detector with random weights (no download: the backbone too) and its family's processor."""
    from detrkit.families import family_of
    from detrkit.modeling import config_from_preset

    config = config_from_preset(name, use_pretrained_backbone=False)
    family = family_of(config)
    return family.detection_class(config).to(device).eval(), family.processor_class()


def from_pretrained(model_id: str, device: str = "cpu", trust_remote_code: bool = False):
    """A trained detector and its processor from a `save_pretrained` folder or a Hub id."""
    import detrkit.modeling  # noqa: F401  (registers detrkit's configs with the Auto classes)
    import detrkit.processing  # noqa: F401
    from safetensors import SafetensorError
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    from detrkit.families import family_of
    from detrkit.inference.model_folder import check_weights_file, default_processor, has_processor

    local = Path(model_id).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise FileNotFoundError(f"{model_id}: no config.json inside; not a save_pretrained model folder")
    if not local.exists() and looks_like_path(model_id):
        raise FileNotFoundError(f"{model_id}: no such folder")
    if local.exists():
        check_weights_file(local, model_id)
    source = str(local) if local.exists() else model_id
    remote = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        model = AutoModelForObjectDetection.from_pretrained(source, **remote).to(device).eval()
        if local.exists() and not has_processor(local):
            processor = default_processor(family_of(model), model_id)
        else:
            processor = AutoImageProcessor.from_pretrained(source, **remote)
    except SafetensorError as error:  # a Hub download that arrived broken (local files are checked above)
        raise ValueError(f"{model_id}: truncated or corrupt weights file ({' '.join(str(error).split())})") from None
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
