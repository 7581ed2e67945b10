"""What a task gives the one training loop (loop.py): a model, its training batches, a loss and, optionally, an
evaluation. The loop does the rest the same way for every task: gradient accumulation, checkpoints and resume,
EMA, patience, the time guard (max_train_minutes / max_steps) and history.jsonl.

Tasks: detection (detection.py; distillation.py's MTKD plugs in as its loss), and the two steps of panoptic /
instance segmentation (segmentation.py: the detector, then the mask head on the frozen detector, whose batches
are frozen_detector_cache.py's cached outputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader

# (model, batch) -> (weighted loss, its terms by name)
LossFunction = Callable[[torch.nn.Module, object], tuple[torch.Tensor, dict]]
# (model, evaluation loader as prepared by accelerate) -> metrics
Evaluation = Callable[[torch.nn.Module, DataLoader], dict]


def forward_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """The model's own loss: a transformers forward with `labels` in the batch."""
    outputs = model(**batch)
    return outputs.loss, outputs.loss_dict or {}


@dataclass
class Task:
    """One thing to train. `train_loader`'s sampler and dataset may have `set_epoch` (the loop calls it, so that
    a resumed run sees the same batches); it and `eval_loader` are prepared by accelerate with the model."""

    name: str  # shown in progress bars and tracker keys ("" for a run of one task)
    model: torch.nn.Module
    train_loader: DataLoader
    loss: LossFunction = forward_loss
    evaluate: Evaluation | None = None  # None: the task is not evaluated (e.g. the panoptic detector step)
    eval_loader: DataLoader | None = None
    headline: str = "map"  # the metric that picks the best checkpoint and counts patience (higher is better)
    headline_name: str = "AP"  # its name in the log
    kept_metrics: tuple[str, ...] | None = None  # what a best checkpoint remembers of its metrics (None: floats)
    describe: Callable[[dict], str] = lambda metrics: ""  # the evaluation's line in the log, after the loss

    def best_summary(self, metrics: dict) -> dict:
        keys = self.kept_metrics or [k for k, v in metrics.items() if isinstance(v, (int, float))]
        return {k: metrics[k] for k in keys}
