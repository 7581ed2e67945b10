"""The model card of a converted official checkpoint: paper figures, citation and `model-index` metadata."""

import string
from pathlib import Path

import yaml

from detrkit.families import family_of
from detrkit.modeling.model_card import render_model_card

from .zoo import CITATIONS, zoo_entry_for


def _model_index(name: str, metrics: dict, task: str) -> str:
    """Hub `model-index` front matter: the paper's COCO val2017 figures, marked as the official repository's."""
    results = [{
        "task": {"type": task},
        "dataset": {"type": "coco", "name": "COCO 2017", "split": "validation"},
        "metrics": [{"type": metric.lower(), "value": value, "name": f"{metric} (official repository)"}
                    for metric, value in metrics.items()],
    }]
    return yaml.safe_dump({"model-index": [{"name": name, "results": results}]}, sort_keys=False)


def write_official_model_card(model, output_dir: Path, file_name: str, dc5_source: str):
    """README.md for the folder (save_pretrained keeps an existing card)."""
    panoptic = hasattr(model, "mask_head")
    entry = zoo_entry_for(model.config, panoptic)
    family = family_of(model)
    values = {
        "pipeline_tag": "image-segmentation" if panoptic else "object-detection",
        "task": "panoptic segmentation (boxes, classes and a mask per query)" if panoptic else "object detection",
        "source_file": file_name,
        "dc5_source": dc5_source,
        "citation": CITATIONS[family.name],
        "title": entry.title if entry else f"{type(model).__name__} (converted official checkpoint)",
        "preset": f"`{entry.preset}`" if entry else "none (an architecture no preset describes)",
        "paper_metrics": (", ".join(f"{k} {v}" for k, v in entry.paper_metrics.items()) + " (COCO val2017, "
                          "official repository)") if entry else "not a released architecture: no paper figure",
        "model_index": _model_index(entry.folder, entry.paper_metrics,
                                    "image-segmentation" if panoptic else "object-detection") if entry else "",
        "evaluate_command": "detrkit evaluate OUTPUT_DIR --data path/to/coco --split val2017",
    }
    text = render_model_card(model, family.official_card_template)
    (Path(output_dir) / "README.md").write_text(string.Template(text).safe_substitute(values), encoding="utf-8")
