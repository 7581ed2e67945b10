"""`detrkit train` (task detection): the model and data chosen for the run, the detection task the one loop trains
(loop.py; MTKD distillation as its loss when `--distill-from`), and the exported run folder: the best model (by AP)
as a Hub-ready folder with its processor, card, metrics.json, training.png and a predictions drawing."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from detrkit.inference.coco_evaluation import evaluate, format_table

from .checkpoint import usual_permissions
from .config import TrainConfig, format_config, launcher_settings, resolve_for_data, resolve_for_model
from .detection_data import load_data
from .distillation import build_distiller
from .history import read_history
from .loop import Trained, fit
from .memory_savers import apply_memory_savers, memory_savers_wanted
from .run_card import write_run_card
from .models import resolve_model
from .recipes import get_recipe
from .run_folder import make_accelerator
from .sampling import EpochShuffleSampler, SeededAugmentation
from .task import Task, forward_loss

METRIC_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


def quiet_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise


def train_detection(config: TrainConfig) -> dict:
    """Run training as configured; returns the final evaluation metrics (also written to metrics.json)."""
    quiet_logging()
    config, accelerator, loaded, data, model, notes = prepare_detection_run(config)
    accelerator.print(format_config(config, notes))
    task = detection_task(config, accelerator, loaded, data, model)
    accelerator.init_trackers("detrkit", config={k: v for k, v in config.to_dict().items()
                                                 if isinstance(v, (int, float, str, bool))})
    trained = fit(task, config, accelerator, config.output_dir, resume=config.resume)
    export_detection_run(config, accelerator, trained, loaded, data)
    accelerator.end_training()  # after the final evaluation: it tears the process group down
    return trained.metrics


def prepare_detection_run(config: TrainConfig):
    """Config -> (config with every choice made, accelerator, loaded model, data, model, notes)."""
    config, notes = launcher_settings(config)
    config, accelerator = make_accelerator(config)
    set_seed(config.seed)
    loaded = resolve_model(config, log=accelerator.print)
    config, model_notes = resolve_for_model(config, loaded.family, loaded.processor_size, is_builtin(config.data))
    loaded.size_processor(config)
    if not loaded.pretrained and not is_builtin(config.data):
        accelerator.print(
            f"WARNING: {config.model} starts from a random backbone, which needs far more data and epochs than "
            "fine-tuning; start from ImageNet weights with --set model_overrides.use_pretrained_backbone=true "
            "(timm downloads them), or from a COCO checkpoint such as --model SenseTime/deformable-detr")
    data = load_data(config, loaded.processor, log=accelerator.print)
    model = loaded.adapt_to_labels(data.id2label, log=accelerator.print)
    config, data_notes = resolve_for_data(config, loaded.family, len(data.train), loaded.pretrained,
                                          get_recipe(config.recipe).lr_scale)
    return config, accelerator, loaded, data, model, notes + [loaded.recipe_note] + model_notes + data_notes


def is_builtin(data: str) -> bool:
    from detrkit.data.builtin.shapes import BUILTIN_DATASETS

    return str(data) in BUILTIN_DATASETS


def detection_task(config: TrainConfig, accelerator: Accelerator, loaded, data, model) -> Task:
    """The detector, its seeded augmented batches, its set loss (or MTKD's), COCO mAP on the evaluation split."""
    train_loader, eval_loader = detection_loaders(config, data, accelerator)
    if memory_savers_wanted(config.memory_savers, accelerator.device):
        apply_memory_savers(model)  # same weights and keys: checkpoints and exports are unaffected
        accelerator.print("memory savers: on (feed-forward recomputation, output-saving layer norms, bool-mask "
                          "dropout, stacked query projections)")
    distiller = build_distiller(config.distill_from, model, accelerator.device, accelerator.print)  # MTKD
    return Task(name="", model=model, train_loader=train_loader, eval_loader=eval_loader,
                loss=forward_loss if distiller is None else distiller.loss,
                evaluate=lambda evaluated, loader: evaluate(evaluated, loader, loaded.processor, data, accelerator),
                headline="map", kept_metrics=METRIC_KEYS, describe=describe_ap)


def describe_ap(metrics: dict) -> str:
    return f"AP {metrics['map']:.4f}  AP50 {metrics['map_50']:.4f}  AP_small {metrics['map_small']:.4f}"


def detection_loaders(config: TrainConfig, data, accelerator: Accelerator) -> tuple[DataLoader, DataLoader]:
    """Training batches in an order and with augmentations drawn from (seed, epoch) alone (sampling.py)."""
    train_set = SeededAugmentation(data.train, config.seed)
    sampler = EpochShuffleSampler(len(train_set), config.seed)
    common = dict(collate_fn=data.collate_fn, num_workers=config.num_workers,
                  pin_memory=accelerator.device.type == "cuda", persistent_workers=False)
    # A private generator: the loader's per-epoch base seed must not come from (and advance) the global RNG.
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                              generator=torch.Generator().manual_seed(config.seed), **common)
    eval_loader = DataLoader(data.eval, batch_size=config.eval_batch_size or config.batch_size, shuffle=False, **common)
    return train_loader, eval_loader


def export_detection_run(config: TrainConfig, accelerator: Accelerator, trained: Trained, loaded, data) -> None:
    """<output_dir>/model (weights, processor, card), metrics.json, training.png, predictions.png; pushed when
    asked."""
    if accelerator.is_main_process:
        output, metrics = Path(config.output_dir), trained.metrics
        export = output / "model"
        trained.model.save_pretrained(export)
        loaded.processor.save_pretrained(export)
        write_metrics(output / "metrics.json", metrics, data, trained)
        write_run_card(export, config, loaded, data, metrics, read_history(output / "history.jsonl"),
                         accelerator.num_processes)
        usual_permissions(export)
        print(format_table(metrics))
        if config.drawings:
            from detrkit.inference.detection_drawing import draw_eval_predictions

            draw_eval_predictions(trained.model, loaded.processor, data, output / "predictions.png",
                                  threshold=config.threshold, device=accelerator.device)
        print(f"wrote {output}/: metrics.json, model/, training.png, history.jsonl"
              + (", predictions.png" if config.drawings else ""))
        if config.push_to_hub:
            from .sharing import push_folder

            url = push_folder(export, config.push_to_hub, private=config.private)
            print(f"pushed {export} to {url}")
    accelerator.wait_for_everyone()


def write_metrics(path: Path, metrics: dict, data, trained: Trained) -> None:
    summary = {k: float(metrics[k]) for k in METRIC_KEYS}
    skipped = data.skipped_images() if hasattr(data, "skipped_images") else {}  # failed to decode mid-run
    path.write_text(json.dumps({**summary, "skipped_undecodable_images": skipped, "ema": bool(trained.ema),
                                "epochs_run": trained.state["epoch"], "steps": trained.state["global_step"]},
                               indent=2))


__all__ = ["METRIC_KEYS", "detection_loaders", "detection_task", "export_detection_run", "prepare_detection_run",
           "train_detection"]
