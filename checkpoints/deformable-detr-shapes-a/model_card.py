"""Model cards written next to saved weights (save_pretrained) and uploaded with them (push_to_hub)."""

import importlib.util
import string
from pathlib import Path
_FALLBACK = """---
library_name: transformers
pipeline_tag: object-detection
tags: [object-detection, detrkit, $model_type]
---
# $architecture

A detrkit $model_type model ($backbone backbone, $num_labels classes, $num_queries queries,
$num_parameters parameters). Load it with
`AutoModelForObjectDetection.from_pretrained(repo_id, trust_remote_code=True)`.
"""


def _template_text(template: str) -> str:
    """detrkit.model_cards/<template>.md (the repository's model_cards/ folder); code copied to the Hub
    (trust_remote_code) may run without detrkit installed, and then a short built-in card stands in."""
    try:
        spec = importlib.util.find_spec("detrkit.model_cards")
    except ModuleNotFoundError:
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / f"{template}.md"
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return _FALLBACK


def render_model_card(model, template: str = "detr") -> str:
    """Fill model_cards/<template>.md with the model's config; `$name` placeholders, unknown ones left as-is."""
    text = _template_text(template)
    config = model.config
    values = {
        **{k: v for k, v in config.to_dict().items() if isinstance(v, (str, int, float, bool))},
        "architecture": type(model).__name__,
        "num_labels": config.num_labels,
        "num_parameters": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M",
        "labels": ", ".join(str(v) for v in list((config.id2label or {}).values())[:20]),
    }
    return string.Template(text).safe_substitute(values)


def write_model_card(model, save_directory, template: str = "detr"):
    """Write README.md unless the folder already has one (a user's card wins)."""
    readme = Path(save_directory) / "README.md"
    if not readme.exists():
        readme.write_text(render_model_card(model, template), encoding="utf-8")
