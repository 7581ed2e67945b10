"""The model card of an exported model, completed with what the run measured.

`save_pretrained` writes README.md from the repository's card template (model_cards/, filled from the model's
config by detrkit.modeling.model_card). Its "Training and evaluation" section asks for the data, schedule and
COCO metrics; this module writes exactly that section (replacing the placeholder one, or appending it), with
every number taken from the run's own evaluation and history. The card's YAML header gets what the Hub indexes:
library_name, pipeline_tag, base_model (a Hub starting point), datasets (a Hub data set) and a model-index with
the COCO metrics (huggingface_hub's ModelCard / EvalResult write it).
"""
from __future__ import annotations

import re
from pathlib import Path

SECTION = "## Training and evaluation"

METRIC_ROWS = (("map", "AP"), ("map_50", "AP50"), ("map_75", "AP75"), ("map_small", "AP small"),
               ("map_medium", "AP medium"), ("map_large", "AP large"), ("mar_100", "AR@100"))


def metrics_table(metrics: dict) -> str:
    rows = [f"| {label} | {metrics[key]:.4f} |" for key, label in METRIC_ROWS if key in metrics]
    return "\n".join(["| metric | value |", "|---|---|", *rows])


def history_table(history: list[dict]) -> str:
    rows = [f"| {r['epoch']} | {r['train_loss']:.4f} | " + (f"{r['map']:.4f}" if "map" in r else "-") + " |"
            for r in history]
    return "\n".join(["| epoch | train loss | AP |", "|---|---|---|", *rows]) if rows else ""


def training_section(config, loaded, data, metrics: dict, history: list[dict], world_size: int = 1) -> str:
    labels = ", ".join(str(v) for v in data.id2label.values())
    return f"""{SECTION}

Trained with `detrkit train` from `{loaded.source}` on `{config.data}` ({len(data.id2label)} classes:
{labels}); {len(data.train)} training images, evaluated on the {len(data.eval_records)} images of its
`{config.eval_split}` split. Backbone: {loaded.backbone_note}.

Recipe: {config.epochs} epochs, batch size {config.batch_size} x {world_size} process(es) x
{config.gradient_accumulation_steps} accumulation step(s), AdamW lr {config.lr:g} (backbone x{config.lr_backbone_mult:g}),
weight decay {config.weight_decay:g}, gradient clipping {config.clip_grad_norm:g}, {config.schedule} schedule
(decay x{config.lr_gamma:g} at epoch {config.lr_drop_epoch}), images with shortest edge {config.image_size},
mixed precision `{config.mixed_precision}`, seed {config.seed}.

COCO metrics of this checkpoint ({config.eval_split} split, pycocotools COCOeval):

{metrics_table(metrics)}

{history_table(history)}
"""


def write_run_card(folder: str | Path, config, loaded, data, metrics: dict, history: list[dict],
                     world_size: int = 1) -> Path:
    path = Path(folder) / "README.md"
    card = path.read_text(encoding="utf-8") if path.exists() else "# DETR-family detector\n"
    section = training_section(config, loaded, data, metrics, history, world_size)
    if SECTION in card:  # replace the template's placeholder section, up to the next section
        card = re.sub(rf"{re.escape(SECTION)}.*?(?=\n## |\Z)", lambda _: section.rstrip() + "\n", card,
                      flags=re.S)
    else:
        card = card.rstrip() + "\n\n" + section
    run_name = Path(folder).resolve().parent.name  # the run folder's name (outputs/<model>-<data>-<time>)
    path.write_text(str(with_metadata(card, config, loaded, metrics, run_name)), encoding="utf-8")
    return path


def is_hub_dataset(name) -> bool:
    """`owner/name` or `name` that is no local path and no built-in set."""
    text = str(name or "")
    builtin = text in ("shapes-a", "shapes-b")
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", text)) and not builtin and not Path(text).exists()


def with_metadata(text: str, config, loaded, metrics: dict, model_name: str):
    """The card with library_name, pipeline_tag, base_model, datasets and a model-index of the run's metrics."""
    from huggingface_hub import EvalResult, ModelCard

    card = ModelCard(text)
    card.data.library_name = "transformers"
    card.data.pipeline_tag = "object-detection"
    base = getattr(loaded, "hub_id", None)  # set only for a checkpoint loaded from the Hub
    if base:
        card.data.base_model = base
    hub_data = is_hub_dataset(config.data)
    if hub_data:
        card.data.datasets = [str(config.data)]
    data_name = Path(str(config.data).rstrip("/")).name
    card.data.model_name = config.push_to_hub or model_name
    card.data.eval_results = [
        EvalResult(task_type="object-detection", task_name="Object Detection",
                   dataset_type=str(config.data) if hub_data else data_name, dataset_name=data_name,
                   dataset_split=config.eval_split, metric_type=key, metric_name=label,
                   metric_value=round(float(metrics[key]), 4))
        for key, label in METRIC_ROWS if key in metrics and float(metrics[key]) >= 0]  # -1: no such ground truth
    return card
