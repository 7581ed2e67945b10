"""The run folder and the accelerator that logs into it: chosen once (the same on every process), and never an
earlier run's checkpoints overwritten unless asked (`--overwrite-output-dir`) or continued (`--resume`).

A run of one task keeps its checkpoints in <output_dir>/checkpoints/; a run of several steps (panoptic /
instance segmentation) in <output_dir>/steps/<step>/checkpoints/.
"""
from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, broadcast_object_list

from detrkit.errors import UsageError

from .checkpoint import read_index, resolve_resume
from .config import TrainConfig, default_output_dir
from .accelerate_device import uses_cpu


def make_accelerator(config: TrainConfig) -> tuple[TrainConfig, Accelerator]:
    """The run folder first (decided once and shared by every process), then the accelerator logging into it."""
    # the process group first, so that every process gets the main process's folder name; as AcceleratorState
    # would create it (ACCELERATE_USE_CPU: several CPU processes over gloo)
    cpu = uses_cpu(config)  # --device cpu or the launcher's ACCELERATE_USE_CPU
    PartialState(cpu=cpu)
    config = resolve_output_dir(config)
    output = Path(config.output_dir)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.report_to or None,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
        step_scheduler_with_optimizer=False,  # the loop steps it once per optimizer step
    )
    return config, accelerator


def checkpoint_roots(output_dir: str | Path) -> list[Path]:
    """Every folder of checkpoints a run in `output_dir` may have written (existing or not)."""
    output = Path(output_dir)
    return [output / "checkpoints", *sorted((output / "steps").glob("*/checkpoints"))]


def has_checkpoints(root: Path) -> bool:
    return bool(read_index(root).get("latest")) or (root.is_dir() and any(root.glob("step-*")))


def newest_run(config: TrainConfig) -> str | None:
    """The newest outputs/<model>-<data>-* folder with checkpoints (for `--resume latest` without --output-dir)."""
    prefix = Path(default_output_dir(config)).name.rsplit("-", 2)[0]
    runs = sorted(p for p in Path("outputs").glob(f"{prefix}-*")
                  if any((root / "index.json").exists() for root in checkpoint_roots(p)))
    return str(runs[-1]) if runs else None


def resolve_output_dir(config: TrainConfig) -> TrainConfig:
    """A folder of its own (the same on every process), checked against what an earlier run left there."""
    output_dir = config.output_dir
    if output_dir is None:
        chosen = newest_run(config) if config.resume == "latest" else None
        output_dir = broadcast_object_list([chosen or default_output_dir(config)])[0]
    config = type(config)(**{**config.to_dict(), "output_dir": output_dir})
    earlier = [root for root in checkpoint_roots(output_dir) if has_checkpoints(root)]
    if config.resume == "latest":
        if not any(read_index(root).get("latest") for root in earlier):
            raise UsageError(f"--resume latest: no checkpoint in {Path(output_dir) / 'checkpoints'} to continue "
                             "(start without --resume, or give the run's --output-dir)")
    elif config.resume:
        resolve_resume(config.resume, Path(output_dir) / "checkpoints")  # a checkpoint folder, or it says why not
    elif earlier and not config.overwrite_output_dir:
        raise UsageError(f"{output_dir} holds the checkpoints of an earlier run; continue it with --resume latest, "
                         "start afresh with --overwrite-output-dir (deletes them), or choose another --output-dir")
    return config
