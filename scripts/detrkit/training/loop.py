"""The one training loop, for every task (task.py): the papers' optimiser and schedule, gradient accumulation,
evaluation every N epochs, checkpoints and exact resume, EMA, early stopping (patience), the time guard
(max_train_minutes / max_steps) and history.jsonl, the same for detection, distillation and the segmentation steps.

`fit(task, config, accelerator, run_dir)` trains in `run_dir` (checkpoints/, history.jsonl, training.png,
train_config.json) and returns the weights to export with their metrics; what is exported is the task's caller's.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from detrkit.errors import UsageError
from detrkit.progress import progress as progress_bar

from .checkpoint import load_checkpoint, read_index, resolve_resume, save_checkpoint
from .config import TrainConfig
from .history import append_record, plot_history, read_history, truncate_history
from .optim import build_optimizer, build_scheduler
from .task import Task


@dataclass
class Trained:
    """What `fit` leaves: the weights to export (the EMA's when kept; the best checkpoint's when it scored higher
    than the last evaluation), their metrics (None for a task without evaluation), and the run's record."""

    model: torch.nn.Module
    metrics: dict | None
    state: dict  # epoch, batches_in_epoch, global_step, best_metric, best_epoch, ...
    minutes: float
    ema: bool  # the exported weights are an exponential moving average

    @property
    def epochs_run(self) -> int:  # an epoch stopped inside counts
        return self.state["epoch"] + (1 if self.state["batches_in_epoch"] else 0)


def fit(task: Task, config: TrainConfig, accelerator: Accelerator, run_dir: str | Path, *,
        resume: str | None = None, started: float | None = None) -> Trained:
    """Train `task` as `config` says; `resume` a checkpoint folder or "latest" (of `run_dir`); `started` when
    the time guard's clock started (default: now)."""
    return TrainingLoop(task, config, accelerator, Path(run_dir), resume, started).run()


def new_state() -> dict:
    return {"epoch": 0, "batches_in_epoch": 0, "global_step": 0, "best_metric": None, "best_epoch": None,
            "loss_sum": 0.0, "loss_count": 0, "loss_terms": {}, "evals_since_best": 0}


class TrainingLoop:
    def __init__(self, task: Task, config: TrainConfig, accelerator: Accelerator, run_dir: Path,
                 resume: str | None, started: float | None):
        self.task, self.config, self.accelerator, self.run_dir = task, config, accelerator, run_dir
        self.checkpoints, self.history_file = run_dir / "checkpoints", run_dir / "history.jsonl"
        self.label = f"{task.name} " if task.name else ""
        loader = task.train_loader
        # the sampler and dataset that draw from the epoch number (kept before accelerate wraps the loader)
        self.epoch_aware = [part for part in (loader.sampler, loader.dataset) if hasattr(part, "set_epoch")]
        self.batches_per_epoch = self.count_batches()
        self.prepare()
        self.state = self.restore_or_start(resume)
        self.last_metrics = None
        self.started = time.time() if started is None else started

    # ------------------------------------------------------------------------------------------- set-up

    def count_batches(self) -> int:
        """Batches per epoch and process, after accelerate shards them."""
        world = self.accelerator.num_processes
        self.accelerator.print(
            f"accelerate: {self.accelerator.distributed_type.value}, {world} process(es), device "
            f"{self.accelerator.device}, mixed precision {self.accelerator.mixed_precision}, gradient accumulation "
            f"{self.accelerator.gradient_accumulation_steps}")
        batches = len(self.task.train_loader) // world
        if batches == 0:
            raise UsageError(f"{len(self.task.train_loader.dataset)} training images cannot fill one batch of "
                             f"{self.config.batch_size} x {world} processes; lower batch_size")
        return batches

    def prepare(self) -> None:
        """The optimiser and schedule of the papers (optim.py), everything handed to accelerate, the EMA."""
        config = self.config
        steps_per_epoch = max(1, self.batches_per_epoch // config.gradient_accumulation_steps)
        optimizer = build_optimizer(self.task.model, config.lr, config.lr_backbone_mult,
                                    config.lr_linear_proj_mult, config.weight_decay, self.accelerator.device)
        scheduler = build_scheduler(optimizer, steps_per_epoch * config.epochs, config.schedule,
                                    config.lr_drop_epoch * steps_per_epoch, config.lr_gamma, config.warmup_steps)
        self.model, self.optimizer, self.train_loader, self.eval_loader, self.scheduler = self.accelerator.prepare(
            self.task.model, optimizer, self.task.train_loader, self.task.eval_loader, scheduler)
        self.ema = make_ema(self.model, config, self.accelerator)

    def restore_or_start(self, resume: str | None) -> dict:
        """The state of the checkpoint resumed from, or a fresh one in a run folder cleared of an earlier run."""
        accelerator, state = self.accelerator, new_state()
        resume_from = resolve_resume(resume, self.checkpoints)
        if accelerator.is_main_process:  # also when resuming another run's checkpoint into a new folder
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is not None:
            state.update(load_checkpoint(accelerator, resume_from))
            accelerator.print(f"{self.label}resumed from {resume_from}: epoch {state['epoch']}, "
                              f"batch {state['batches_in_epoch']}, step {state['global_step']}")
            if accelerator.is_main_process:
                truncate_history(self.history_file, state["epoch"])  # records of completed epochs only
        elif accelerator.is_main_process:  # a fresh run (run_folder.py allowed it): nothing earlier is resumable
            if self.checkpoints.exists():
                accelerator.print(f"--overwrite-output-dir: deleting the earlier run's checkpoints in "
                                  f"{self.checkpoints}")
            self.history_file.unlink(missing_ok=True)
            shutil.rmtree(self.checkpoints, ignore_errors=True)
        if accelerator.is_main_process:
            (self.run_dir / "train_config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        accelerator.wait_for_everyone()
        return state

    # ------------------------------------------------------------------------------------------- training

    def run(self) -> Trained:
        while not self.should_stop():
            if not self.train_epoch():  # stopped inside the epoch (max_steps, time)
                self.checkpoint()
                break
            self.end_epoch()
        return self.finish()

    def should_stop(self) -> bool:
        config, state = self.config, self.state
        return (state["epoch"] >= config.epochs or bool(config.max_steps and state["global_step"] >= config.max_steps)
                or self.out_of_time() or self.patience_spent())

    def out_of_time(self) -> bool:  # the same answer on every process, or they would stop at different steps
        if not self.config.max_train_minutes:
            return False
        late = float(time.time() - self.started > 60 * self.config.max_train_minutes)
        return bool(self.accelerator.reduce(torch.tensor(late, device=self.accelerator.device),
                                            reduction="max").item())

    def patience_spent(self) -> bool:
        return bool(self.config.patience) and self.state["evals_since_best"] >= self.config.patience

    def train_epoch(self) -> bool:
        """The epoch from where the state says; False when training stopped inside it."""
        epoch, done = self.state["epoch"], self.state["batches_in_epoch"]
        for part in self.epoch_aware:
            part.set_epoch(epoch)
        self.train_loader.set_epoch(epoch)
        loader = self.accelerator.skip_first_batches(self.train_loader, done) if done else self.train_loader
        self.model.train()
        progress = progress_bar(loader, f"{self.label}epoch {epoch + 1}/{self.config.epochs}", initial=done,
                                total=self.batches_per_epoch, disable=not self.accelerator.is_local_main_process)
        for batch in progress:
            if self.train_batch(batch, progress):
                break
        progress.close()
        return self.state["batches_in_epoch"] >= self.batches_per_epoch

    def train_batch(self, batch, progress) -> bool:
        """Forward and backward of one batch, an optimizer step every gradient_accumulation_steps batches; True
        when training stops after it."""
        accelerator, config, state = self.accelerator, self.config, self.state
        with accelerator.accumulate(self.model):
            loss, terms = self.task.loss(self.model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.clip_grad_norm:
                accelerator.clip_grad_norm_(self.model.parameters(), config.clip_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
        state["batches_in_epoch"] += 1
        self.add_to_means(loss, terms)
        if not accelerator.sync_gradients:
            return False
        self.after_optimizer_step(loss, terms, progress)
        if config.max_steps and state["global_step"] >= config.max_steps:
            return True
        if self.out_of_time():
            accelerator.print(f"{self.label}max_train_minutes ({config.max_train_minutes}) reached at step "
                              f"{state['global_step']}")
            return True
        if config.checkpoint_every and state["global_step"] % config.checkpoint_every == 0:
            self.checkpoint()
        return False

    def add_to_means(self, loss: torch.Tensor, terms: dict) -> None:
        """The epoch's running sums: the loss, and each term of the final decoder layer (numbered: auxiliary)."""
        state = self.state
        state["loss_sum"] += loss.item()
        state["loss_count"] += 1
        sums = state.setdefault("loss_terms", {})
        for key, value in terms.items():
            if key.startswith("loss") and key[-1] not in "0123456789":
                sums[key] = sums.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)

    def after_optimizer_step(self, loss: torch.Tensor, terms: dict, progress) -> None:
        state = self.state
        self.scheduler.step()
        state["global_step"] += 1
        if self.ema is not None:
            self.ema.update(self.accelerator.unwrap_model(self.model), step=state["global_step"])
        lr = self.scheduler.get_last_lr()[0]
        progress.set_postfix(loss=f"{loss.item():.3f}", avg=f"{state['loss_sum'] / state['loss_count']:.3f}",
                             lr=f"{lr:.1e}")
        logs = {"train/loss": loss.item(), "train/lr": lr}
        logs.update({f"train/{k}": float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()})
        self.accelerator.log({self.label.strip() + "/" * bool(self.label) + k: v for k, v in logs.items()},
                             step=state["global_step"])

    def checkpoint(self, best: bool = False) -> None:
        name = f"step-{self.state['global_step']:07d}"
        save_checkpoint(self.accelerator, self.checkpoints, name, self.state, best=best,
                        keep=self.config.keep_checkpoints)

    # ------------------------------------------------------------------------------------------- epochs

    def epoch_record(self, epoch: float) -> dict:
        state = self.state
        count = max(1, state["loss_count"])
        return {"epoch": epoch, "step": state["global_step"], "train_loss": state["loss_sum"] / count,
                **{k: round(v / count, 5) for k, v in state.get("loss_terms", {}).items()},
                "lr": self.scheduler.get_last_lr()[0], "elapsed_s": round(time.time() - self.started, 1)}

    def end_epoch(self) -> None:
        """History, evaluation when due, the epoch's checkpoint (marked best when it is), early stopping."""
        config, state = self.config, self.state
        epoch = state["epoch"] + 1
        record = self.epoch_record(epoch)
        due = (config.eval_every and epoch % config.eval_every == 0) or epoch == config.epochs
        best = self.evaluate_epoch(record) if due and self.task.evaluate is not None else False
        if self.accelerator.is_main_process:
            append_record(self.history_file, record)
            plot_history(read_history(self.history_file), self.run_dir / "training.png")
        state.update(epoch=epoch, batches_in_epoch=0, loss_sum=0.0, loss_count=0, loss_terms={})
        self.checkpoint(best=best)
        if self.patience_spent() and epoch < config.epochs:
            self.accelerator.print(f"{self.label}early stopping: no better {self.task.headline_name} in "
                                   f"{config.patience} evaluation(s) since epoch {state['best_epoch']} "
                                   f"(--patience {config.patience})")

    def evaluate(self) -> dict:
        """The task's evaluation of what would be exported now (the EMA weights when they are kept)."""
        model = self.ema.module if self.ema is not None else self.model
        metrics = self.task.evaluate(model, self.eval_loader)
        self.model.train()
        self.state["eval_step"] = self.state["global_step"]
        return metrics

    def evaluate_epoch(self, record: dict) -> bool:
        """Evaluate at the end of an epoch; True when it is the best so far."""
        state, headline = self.state, self.task.headline
        metrics = self.last_metrics = self.evaluate()
        scores = {k: v for k, v in metrics.items() if isinstance(v, float)}
        record.update(scores)
        self.accelerator.log({f"eval/{k}": v for k, v in scores.items()}, step=state["global_step"])
        self.accelerator.print(f"{self.label}epoch {record['epoch']}: loss {record['train_loss']:.4f}  "
                               f"{self.task.describe(metrics)}" + ("  (EMA weights)" if self.ema is not None else ""))
        if state["best_metric"] is not None and not metrics[headline] > state["best_metric"]:
            state["evals_since_best"] = state.get("evals_since_best", 0) + 1
            return False
        state["best_metric"], state["best_epoch"] = metrics[headline], record["epoch"]
        state["best_metrics"] = self.task.best_summary(metrics)
        state["evals_since_best"] = 0
        return True

    # ------------------------------------------------------------------------------------------- the end

    def finish(self) -> Trained:
        """The final evaluation when training went past the last one, and the best weights when they scored higher
        than the last."""
        state, metrics = self.state, self.last_metrics
        if self.task.evaluate is not None and (metrics is None or state.get("eval_step") != state["global_step"]):
            metrics = self.evaluate()
        if state["batches_in_epoch"] and self.accelerator.is_main_process:  # stopped inside an epoch: record it too
            record = self.epoch_record(round(state["epoch"] + state["batches_in_epoch"] / self.batches_per_epoch, 3))
            del record["lr"], record["elapsed_s"]
            append_record(self.history_file, {**record, **{k: v for k, v in (metrics or {}).items()
                                                           if isinstance(v, float)}})
        if self.accelerator.is_main_process:
            plot_history(read_history(self.history_file), self.run_dir / "training.png")
        metrics = self.best_if_better(metrics)
        model = self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)
        return Trained(model, metrics, state, round((time.time() - self.started) / 60, 2), self.ema is not None)

    def best_if_better(self, metrics: dict | None) -> dict | None:
        best, headline = self.state.get("best_metrics"), self.task.headline
        if metrics is None or best is None or not best[headline] > metrics[headline]:
            return metrics
        self.accelerator.load_state(str(self.checkpoints / read_index(self.checkpoints)["best"]))  # RNG no longer
        self.accelerator.print(f"exporting the best epoch ({self.state['best_epoch']}, {self.task.headline_name} "
                               f"{best[headline]:.4f} > last {metrics[headline]:.4f})")
        return best


def make_ema(model: torch.nn.Module, config: TrainConfig, accelerator: Accelerator):
    """timm's EMA of every weight and buffer (decay warmed up, so early averages are not dominated by the
    start), checkpointed with the rest of the training state."""
    if not config.ema:
        return None
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=config.ema_decay, use_warmup=True)
    accelerator.register_for_checkpointing(ema)
    return ema


__all__ = ["Trained", "TrainingLoop", "fit", "make_ema"]
