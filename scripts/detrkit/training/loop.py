"""The accelerate training loop: recipe, evaluation every N epochs, checkpoints, resume, EMA, early stopping, export."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, broadcast_object_list, parse_flag_from_env, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, read_index, resolve_resume, save_checkpoint, usual_permissions
from .config import (TrainConfig, default_output_dir, format_config, launcher_settings, resolve_for_data,
                     resolve_for_model)
from .data import load_data
from .distillation import build_distiller
from .errors import UsageError
from .evaluation import evaluate, format_table
from .history import append_record, plot_history, read_history, truncate_history
from .memory_savers import apply_memory_savers, memory_savers_wanted
from .model_card import write_model_card
from .models import load_model
from .optim import build_optimizer, build_scheduler
from .sampling import EpochShuffleSampler, SeededAugmentation

logger = logging.getLogger("detrkit.train")
METRIC_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


def make_accelerator(config: TrainConfig) -> tuple[TrainConfig, Accelerator]:
    """The run folder first (decided once and shared by every process), then the accelerator logging into it."""
    # the process group first, so that every process gets the main process's folder name; as AcceleratorState
    # would create it (ACCELERATE_USE_CPU: several CPU processes over gloo)
    PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    config = resolve_output_dir(config)
    output = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.report_to or None,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step ourselves
    )
    return config, accelerator


def newest_run(config: TrainConfig) -> str | None:
    """The newest outputs/<model>-<data>-* folder with checkpoints (for `--resume latest` without --output-dir)."""
    prefix = Path(default_output_dir(config)).name.rsplit("-", 2)[0]
    runs = sorted(p for p in Path("outputs").glob(f"{prefix}-*") if (p / "checkpoints" / "index.json").exists())
    return str(runs[-1]) if runs else None


def resolve_output_dir(config: TrainConfig) -> TrainConfig:
    """A folder of its own (the same on every process), and never an earlier run's checkpoints overwritten
    unless asked."""
    output_dir = config.output_dir
    if output_dir is None:
        chosen = newest_run(config) if config.resume == "latest" else None
        output_dir = broadcast_object_list([chosen or default_output_dir(config)])[0]
    config = type(config)(**{**config.to_dict(), "output_dir": output_dir})
    ckpt_root = Path(output_dir) / "checkpoints"
    index = read_index(ckpt_root)
    earlier = index.get("latest") or (ckpt_root.is_dir() and any(ckpt_root.glob("step-*")))
    if config.resume:
        if resolve_resume(config.resume, ckpt_root) is None:
            raise UsageError(f"--resume {config.resume}: no checkpoint in {ckpt_root} to continue (start without "
                             "--resume, or give the run's --output-dir)")
    elif earlier and not config.overwrite_output_dir:
        raise UsageError(f"{output_dir} holds the checkpoints of an earlier run; continue it with --resume latest, "
                         "start afresh with --overwrite-output-dir (deletes them), or choose another --output-dir")
    return config


def make_loaders(config: TrainConfig, data, accelerator: Accelerator):
    train_set = SeededAugmentation(data.train, config.seed)
    sampler = EpochShuffleSampler(len(train_set), config.seed)
    common = dict(collate_fn=data.collate_fn, num_workers=config.num_workers,
                  pin_memory=accelerator.device.type == "cuda", persistent_workers=False)
    # A private generator: the loader's per-epoch base seed must not come from (and advance) the global RNG.
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                              generator=torch.Generator().manual_seed(config.seed), **common)
    eval_loader = DataLoader(data.eval, batch_size=config.eval_batch_size or config.batch_size, shuffle=False, **common)
    return train_loader, eval_loader, sampler, train_set


def make_ema(model: torch.nn.Module, config: TrainConfig, accelerator: Accelerator):
    """timm's EMA of every weight and buffer (decay warmed up, so early averages are not dominated by the
    start), checkpointed with the rest of the training state."""
    if not config.ema:
        return None
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=config.ema_decay, use_warmup=True)
    accelerator.register_for_checkpointing(ema)
    return ema


def prepare_run(config: TrainConfig):
    """Config -> (config with every choice made, accelerator, loaded model, data, model, notes)."""
    config, notes = launcher_settings(config)
    config, accelerator = make_accelerator(config)
    set_seed(config.seed)
    loaded = load_model(config, log=accelerator.print)
    config, model_notes = resolve_for_model(config, loaded.kind, loaded.processor_size, is_builtin(config.data))
    loaded.size_processor(config)
    if not loaded.pretrained and not is_builtin(config.data):
        accelerator.print(
            f"WARNING: {config.model} starts from a random backbone, which needs far more data and epochs than "
            "fine-tuning; start from ImageNet weights with --set model_overrides.use_pretrained_backbone=true "
            "(timm downloads them), or from a COCO checkpoint such as --model SenseTime/deformable-detr")
    data = load_data(config, loaded.processor, log=accelerator.print)
    model = loaded.adapt_to_labels(data.id2label, log=accelerator.print)
    config, data_notes = resolve_for_data(config, loaded.kind, len(data.train), loaded.pretrained)
    return config, accelerator, loaded, data, model, notes + model_notes + data_notes


def is_builtin(data: str) -> bool:
    from detrkit.processing.synthetic_shapes import BUILTIN_DATASETS

    return str(data) in BUILTIN_DATASETS


def train(config: TrainConfig) -> dict:
    """Run training as configured; returns the final evaluation metrics (also written to metrics.json)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    config, accelerator, loaded, data, model, notes = prepare_run(config)
    output = Path(config.output_dir)
    ckpt_root = output / "checkpoints"
    accelerator.print(format_config(config, notes))
    train_loader, eval_loader, sampler, train_set = make_loaders(config, data, accelerator)

    world = accelerator.num_processes
    accelerator.print(f"accelerate: {accelerator.distributed_type.value}, {world} process(es), device "
                      f"{accelerator.device}, mixed precision {accelerator.mixed_precision}, gradient accumulation "
                      f"{accelerator.gradient_accumulation_steps}")
    batches_per_epoch = len(train_loader) // world  # per process, after accelerate shards the batches
    steps_per_epoch = max(1, batches_per_epoch // config.gradient_accumulation_steps)
    if batches_per_epoch == 0:
        raise UsageError(f"{len(data.train)} training images cannot fill one batch of {config.batch_size} "
                         f"x {world} processes; lower batch_size")
    optimizer = build_optimizer(model, config.lr, config.lr_backbone_mult, config.lr_linear_proj_mult,
                                config.weight_decay)
    scheduler = build_scheduler(optimizer, steps_per_epoch * config.epochs, config.schedule,
                                config.lr_drop_epoch * steps_per_epoch, config.lr_gamma, config.warmup_steps)
    if memory_savers_wanted(config.memory_savers, accelerator.device):
        apply_memory_savers(model)  # same weights and keys: checkpoints and exports are unaffected
        accelerator.print("memory savers: on (feed-forward recomputation, output-saving layer norms, bool-mask "
                          "dropout, stacked query projections)")
    distiller = build_distiller(config.distill_from, model, accelerator.device, accelerator.print)  # MTKD
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler)
    ema = make_ema(model, config, accelerator)

    state = {"epoch": 0, "batches_in_epoch": 0, "global_step": 0, "best_metric": None, "best_epoch": None,
             "loss_sum": 0.0, "loss_count": 0, "evals_since_best": 0}
    resume_from = resolve_resume(config.resume, ckpt_root)
    history_file = output / "history.jsonl"
    if resume_from is not None:
        state.update(load_checkpoint(accelerator, resume_from))
        accelerator.print(f"resumed from {resume_from}: epoch {state['epoch']}, "
                          f"batch {state['batches_in_epoch']}, step {state['global_step']}")
        if accelerator.is_main_process:
            truncate_history(history_file, state["epoch"])  # records of completed epochs only
    elif accelerator.is_main_process:  # a fresh run (resolve_output_dir allowed it): nothing earlier is resumable
        output.mkdir(parents=True, exist_ok=True)
        if ckpt_root.exists():
            accelerator.print(f"--overwrite-output-dir: deleting the earlier run's checkpoints in {ckpt_root}")
        history_file.unlink(missing_ok=True)
        shutil.rmtree(ckpt_root, ignore_errors=True)
    if accelerator.is_main_process:
        (output / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    accelerator.wait_for_everyone()
    accelerator.init_trackers("detrkit", config={k: v for k, v in config.to_dict().items()
                                                 if isinstance(v, (int, float, str, bool))})

    def checkpoint(best: bool = False):
        name = f"step-{state['global_step']:07d}"
        save_checkpoint(accelerator, ckpt_root, name, state, best=best, keep=config.keep_checkpoints)

    last_metrics = None
    started = time.time()

    def out_of_time() -> bool:  # the same answer on every process, or they would stop at different steps
        if not config.max_train_minutes:
            return False
        late = torch.tensor(float(time.time() - started > 60 * config.max_train_minutes), device=accelerator.device)
        return bool(accelerator.reduce(late, reduction="max").item())

    def patience_spent() -> bool:
        return bool(config.patience) and state["evals_since_best"] >= config.patience

    while state["epoch"] < config.epochs and not (config.max_steps and state["global_step"] >= config.max_steps) \
            and not out_of_time() and not patience_spent():
        epoch = state["epoch"]
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        loader = train_loader
        if state["batches_in_epoch"]:
            loader = accelerator.skip_first_batches(train_loader, state["batches_in_epoch"])
        model.train()
        progress = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", initial=state["batches_in_epoch"],
                        total=batches_per_epoch, disable=not accelerator.is_local_main_process, dynamic_ncols=True)
        for batch in progress:
            with accelerator.accumulate(model):
                outputs = model(**batch) if distiller is None else distiller(model, batch)
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and config.clip_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            state["batches_in_epoch"] += 1
            state["loss_sum"] += outputs.loss.item()
            state["loss_count"] += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state["global_step"] += 1
            if ema is not None:
                ema.update(accelerator.unwrap_model(model), step=state["global_step"])
            mean_loss = state["loss_sum"] / state["loss_count"]
            progress.set_postfix(loss=f"{outputs.loss.item():.3f}", avg=f"{mean_loss:.3f}",
                                 lr=f"{scheduler.get_last_lr()[0]:.1e}")
            logs = {"train/loss": outputs.loss.item(), "train/lr": scheduler.get_last_lr()[0]}
            logs.update({f"train/{k}": float(v.detach()) if torch.is_tensor(v) else float(v)
                         for k, v in (getattr(outputs, "loss_dict", None) or {}).items()})
            accelerator.log(logs, step=state["global_step"])
            if config.max_steps and state["global_step"] >= config.max_steps:
                break
            if out_of_time():
                accelerator.print(f"max_train_minutes ({config.max_train_minutes}) reached at step {state['global_step']}")
                break
            if config.checkpoint_every and state["global_step"] % config.checkpoint_every == 0:
                checkpoint()
        progress.close()
        if state["batches_in_epoch"] < batches_per_epoch:  # stopped by max_steps inside the epoch
            checkpoint()
            break

        record = {"epoch": epoch + 1, "step": state["global_step"],
                  "train_loss": state["loss_sum"] / max(1, state["loss_count"]),
                  "lr": scheduler.get_last_lr()[0], "elapsed_s": round(time.time() - started, 1)}
        is_last = epoch + 1 == config.epochs
        best = False
        if (config.eval_every and (epoch + 1) % config.eval_every == 0) or is_last:
            last_metrics = evaluate(evaluated_model(model, ema), eval_loader, loaded.processor, data, accelerator)
            model.train()
            state["eval_step"] = state["global_step"]
            record.update({k: last_metrics[k] for k in last_metrics if isinstance(last_metrics[k], float)})
            accelerator.log({f"eval/{k}": v for k, v in record.items() if k.startswith("ma")}, step=state["global_step"])
            accelerator.print(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}  AP {last_metrics['map']:.4f}  "
                              f"AP50 {last_metrics['map_50']:.4f}  AP_small {last_metrics['map_small']:.4f}"
                              + ("  (EMA weights)" if ema is not None else ""))
            if state["best_metric"] is None or last_metrics["map"] > state["best_metric"]:
                state["best_metric"], state["best_epoch"], best = last_metrics["map"], epoch + 1, True
                state["best_metrics"] = {k: last_metrics[k] for k in METRIC_KEYS}
                state["evals_since_best"] = 0
            else:
                state["evals_since_best"] = state.get("evals_since_best", 0) + 1
        if accelerator.is_main_process:
            append_record(history_file, record)
            plot_history(read_history(history_file), output / "training.png")
        state.update(epoch=epoch + 1, batches_in_epoch=0, loss_sum=0.0, loss_count=0)
        checkpoint(best=best)
        if patience_spent() and state["epoch"] < config.epochs:
            accelerator.print(f"early stopping: no better AP in {config.patience} evaluation(s) since epoch "
                              f"{state['best_epoch']} (--patience {config.patience})")

    metrics = finish(config, accelerator, model, ema, loaded, data, eval_loader, state, last_metrics,
                     batches_per_epoch)
    accelerator.end_training()  # after the final evaluation: it tears the process group down
    return metrics


def evaluated_model(model, ema):
    """What is evaluated and exported: the EMA weights when they are kept."""
    return ema.module if ema is not None else model


def finish(config, accelerator, model, ema, loaded, data, eval_loader, state, last_metrics, batches_per_epoch):
    """Export the best model (by AP) as a Hub-ready folder with its metrics, plot and a predictions drawing."""
    output = Path(config.output_dir)
    if last_metrics is None or state.get("eval_step") != state["global_step"]:  # trained past the last evaluation
        last_metrics = evaluate(evaluated_model(model, ema), eval_loader, loaded.processor, data, accelerator)
        if state["batches_in_epoch"] and accelerator.is_main_process:  # stopped inside an epoch: record it too
            append_record(output / "history.jsonl", {
                "epoch": round(state["epoch"] + state["batches_in_epoch"] / batches_per_epoch, 3),
                "step": state["global_step"], "train_loss": state["loss_sum"] / max(1, state["loss_count"]),
                **{k: v for k, v in last_metrics.items() if isinstance(v, float)}})
    metrics, best = last_metrics, state.get("best_metrics")
    if best is not None and best["map"] > last_metrics["map"]:
        best_dir = output / "checkpoints" / read_index(output / "checkpoints")["best"]
        accelerator.load_state(str(best_dir))  # the best weights (RNG states no longer matter)
        accelerator.print(f"exporting the best epoch ({state['best_epoch']}, AP {best['map']:.4f} > last "
                          f"{last_metrics['map']:.4f})")
        metrics = best
    exported = ema.module if ema is not None else accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        export = output / "model"
        exported.save_pretrained(export)
        loaded.processor.save_pretrained(export)
        plot_history(read_history(output / "history.jsonl"), output / "training.png")
        summary = {k: float(metrics[k]) for k in METRIC_KEYS}
        skipped = data.skipped_images() if hasattr(data, "skipped_images") else {}  # failed to decode mid-run
        (output / "metrics.json").write_text(json.dumps(
            {**summary, "skipped_undecodable_images": skipped, "ema": bool(ema is not None), "epochs_run": state["epoch"],
             "steps": state["global_step"]}, indent=2))
        write_model_card(export, config, loaded, data, metrics, read_history(output / "history.jsonl"),
                         accelerator.num_processes)
        usual_permissions(export)
        print(format_table(metrics))
        if config.predictions_image:
            from .predictions import draw_eval_predictions
            draw_eval_predictions(exported, loaded.processor, data, output / "predictions.png",
                                  threshold=config.threshold, device=accelerator.device)
        print(f"wrote {output}/: metrics.json, model/, training.png, history.jsonl"
              + (", predictions.png" if config.predictions_image else ""))
        if config.push_to_hub:
            from .sharing import push_folder

            url = push_folder(export, config.push_to_hub, private=config.private)
            print(f"pushed {export} to {url}")
    accelerator.wait_for_everyone()
    return metrics
