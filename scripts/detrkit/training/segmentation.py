"""`detrkit train --task panoptic|instance`: DETR's segmentation training (Carion et al., 2020, section 4.4).

The paper's two steps (`freeze_detector: true`, the default), one after the other in one run:

1. the detector on the data's classes, things and stuff alike (every segment is a box to detect), with the
   overrides in `detector_step` (e.g. epochs, max_train_minutes, lr); skipped when `detector_step` is empty (the
   model already detects these classes). Saved to <output_dir>/detector/.
2. the attention map and mask head on top of that detector, frozen; the head runs for the matched queries only
   (`train_matched_masks_only`), the only ones the mask losses read. With `cache_detector_outputs` (and one
   process) its batches are the frozen detector's outputs, computed once per image (frozen_detector_cache.py).

With `freeze_detector: false`, one joint run trains detector and head together (the paper's alternative).

Each step is a task of the one training loop (loop.py): gradient accumulation, checkpoints and `--resume`, EMA,
the time guard, in <output_dir>/steps/<detector|masks>/ (checkpoints/, history.jsonl, training.png). Data:
segmentation_data.py. Evaluation at the end (or every `eval_every` epochs when set): PQ / SQ / RQ (panoptic) or
COCO mask AP (instance) in metrics.json (segmentation_evaluation.py); panoptic.png draws each predicted segment
of a few evaluation images in its own colour, labelled, and predictions.png the same model's detections.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from detrkit.errors import UsageError

from .config import TrainConfig, repo_path, resolve_for_data, resolve_for_model
from .detection import quiet_logging
from .frozen_detector_cache import FrozenDetectorCache, collate_cached, default_max_bytes, head_loss
from .loop import Trained, fit
from .models import resolve_model
from .panoptic_drawing import save_pictures
from .run_folder import make_accelerator
from .sampling import EpochShuffleSampler
from .segmentation_data import SegmentationData, load_segmentation_data, segmentation_collator
from .segmentation_evaluation import SegmentationEvaluation
from .segmentation_model import carry_over_class_rows, segmentation_model
from .task import Task, forward_loss


def train_segmentation(config: TrainConfig) -> dict:
    """Both steps (or the joint run) as the module docstring says; returns the metrics written to metrics.json."""
    if config.task not in ("panoptic", "instance"):
        raise UsageError(f"train_segmentation is for --task panoptic|instance, got {config.task!r}")
    quiet_logging()
    started = time.time()
    config, accelerator, loaded, data, detector = prepare_segmentation_run(config)
    output, log = Path(config.output_dir), accelerator.print
    accelerator.init_trackers("detrkit", config={k: v for k, v in config.to_dict().items()
                                                 if isinstance(v, (int, float, str, bool))})
    steps = {}
    if config.freeze_detector and config.detector_step:  # the paper's first step
        overrides = ", ".join(f"{k} {v}" for k, v in config.detector_step.items())
        log(f"step 1: the detector on {len(data.id2label)} classes ({overrides})")
        steps["detector"] = train_detector_step(detector, data, config, accelerator)
        detector = steps["detector"].model
        if accelerator.is_main_process:
            detector.save_pretrained(output / "detector")
    model = segmentation_model(detector, config.freeze_detector)
    model.config.train_matched_masks_only = True  # the mask losses read the matched queries only
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{'step 2: ' if config.freeze_detector else ''}{type(model).__name__}, detector "
        f"{'frozen' if config.freeze_detector else 'trained jointly'}, {trainable / 1e6:.2f}M trainable parameters")
    evaluation = SegmentationEvaluation(data, loaded.processor, config.task, config.threshold, accelerator.device,
                                        eval_loader(data, loaded.processor, config))
    steps["masks"] = train_mask_step(model, data, config, accelerator, evaluation)
    metrics = export_segmentation_run(config, accelerator, steps, loaded.processor, data, evaluation, started)
    accelerator.end_training()
    return metrics


def prepare_segmentation_run(config: TrainConfig):
    """Config -> (config with every choice made, accelerator, loaded model, data, detector for the data's
    classes)."""
    from .config import launcher_settings

    config, notes = launcher_settings(config)
    config, accelerator = make_accelerator(config)
    set_seed(config.seed)
    log = accelerator.print
    loaded = resolve_model(config, log=log)
    config, model_notes = resolve_for_model(config, loaded.family, loaded.processor_size,
                                            builtin_data=str(config.data).startswith("shapes-"))
    loaded.size_processor(config)
    data = load_segmentation_data(config, loaded.processor, log)
    detector = loaded.adapt_to_labels(data.id2label, log=log)  # a new class head when the classes differ
    carry_over_class_rows(detector, repo_path(str(loaded.source)), log)
    # evaluated at the end unless asked for more: PQ over the evaluation images costs more than a head step
    config = dataclasses.replace(config, eval_every=config.eval_every or 0)
    config, data_notes = resolve_for_data(config, loaded.family, len(data.train), loaded.pretrained)
    log("chosen for this run: " + "; ".join(notes + model_notes + data_notes))
    if accelerator.is_main_process:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.output_dir) / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return config, accelerator, loaded, data, detector


def train_detector_step(detector, data: SegmentationData, config: TrainConfig, accelerator: Accelerator) -> Trained:
    """Step 1: the detector on every class of the data, with `detector_step`'s overrides of the config."""
    step = dataclasses.replace(config, **config.detector_step)
    started = time.time()
    loader = train_loader(data.train, segmentation_collator(data.train.processor), step, step.num_workers)
    return run_step(Task("detector", detector, loader), step, accelerator, started)


def train_mask_step(model, data: SegmentationData, config: TrainConfig, accelerator: Accelerator,
                    evaluation: SegmentationEvaluation) -> Trained:
    """Step 2 (or the joint run): the mask head, on the frozen detector's cached outputs when
    `cache_detector_outputs` and one process, else on the images."""
    started = time.time()  # the time guard counts building the cache
    cached = (config.cache_detector_outputs and accelerator.num_processes == 1 and model.detector_frozen)
    if cached:
        model = model.to(accelerator.device)
        cache = FrozenDetectorCache.build(model, data.train, segmentation_collator(data.train.processor),
                                          config.eval_batch_size or config.batch_size, default_max_bytes(),
                                          accelerator.print)
        loader = train_loader(cache, collate_cached, config, num_workers=0)
        loss = cached_head_loss
    else:
        loader = train_loader(data.train, segmentation_collator(data.train.processor), config, config.num_workers)
        loss = forward_loss
    task = Task("masks", model, loader, loss=loss, evaluate=evaluation, headline=evaluation.headline,
                headline_name=evaluation.headline_name, describe=evaluation.describe)
    return run_step(task, config, accelerator, started)


def cached_head_loss(model, batch) -> tuple[torch.Tensor, dict]:
    return head_loss(model, *batch)


def run_step(task: Task, config: TrainConfig, accelerator: Accelerator, started: float) -> Trained:
    """One step in its own folder, resumed from its own checkpoints; then accelerate forgets its objects, so the
    next step's checkpoints hold that step's alone."""
    run_dir = Path(config.output_dir) / "steps" / task.name
    trained = fit(task, config, accelerator, run_dir, resume=step_resume(config.resume, run_dir), started=started)
    accelerator.free_memory()
    if trained.state["global_step"]:
        accelerator.print(f"{task.name}: {trained.state['global_step']} steps, {trained.epochs_run} epoch(s), "
                          f"{trained.minutes} min")
    return trained


def step_resume(resume: str | None, run_dir: Path) -> str | None:
    """`--resume latest` continues every step from its own latest checkpoint (a step without one starts); a
    checkpoint folder continues its own step, and the others from their latest."""
    if resume in (None, "latest"):
        return resume
    own = Path(resume).resolve().parent == (run_dir / "checkpoints").resolve()
    return resume if own else "latest"


def train_loader(dataset, collate_fn, config: TrainConfig, num_workers: int) -> DataLoader:
    """Shuffled batches in an order drawn from (seed, epoch) alone, as detection's (sampling.py): resumable."""
    sampler = EpochShuffleSampler(len(dataset), config.seed)
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                      drop_last=True, collate_fn=collate_fn, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(config.seed))  # worker seeds: the global RNG untouched


def eval_loader(data: SegmentationData, processor, config: TrainConfig) -> DataLoader:
    """The evaluation images, each process all of them (the metrics need every image)."""
    return DataLoader(data.eval, batch_size=config.eval_batch_size, collate_fn=segmentation_collator(processor),
                      num_workers=config.num_workers)


def export_segmentation_run(config: TrainConfig, accelerator: Accelerator, steps: dict[str, Trained], processor,
                            data: SegmentationData, evaluation: SegmentationEvaluation, started: float) -> dict:
    """<output_dir>/model (the segmentation model and its processor), metrics.json, panoptic.png, predictions.png."""
    output, trained = Path(config.output_dir), steps["masks"]
    model = trained.model
    model.config.train_matched_masks_only = False  # a training-time option, off in the saved model
    metrics = {"task": config.task, **trained.metrics,
               "steps": {name: {"optimizer_steps": t.state["global_step"], "epochs_run": t.epochs_run,
                                "minutes": t.minutes} for name, t in steps.items()},
               "minutes_total": round((time.time() - started) / 60, 2)}
    if accelerator.is_main_process:
        model.save_pretrained(output / "model")
        processor.save_pretrained(output / "model")
        (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
        save_pictures(model, processor, data, evaluation.predictions, output, config.threshold, accelerator.device)
        accelerator.print(f"{evaluation.describe(metrics)}; wrote {output}/: metrics.json, model/, panoptic.png, "
                          f"predictions.png, steps/*/history.jsonl ({metrics['minutes_total']} min)")
    accelerator.wait_for_everyone()
    return metrics


__all__ = ["export_segmentation_run", "prepare_segmentation_run", "train_detector_step", "train_mask_step",
           "train_segmentation"]
