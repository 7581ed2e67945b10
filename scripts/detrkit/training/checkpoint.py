"""Atomic, resumable checkpoints.

A checkpoint is a folder written by `accelerator.save_state` (model, optimizer, scheduler, grad scaler and the
python / numpy / torch / cuda RNG states of every process) plus `trainer_state.json` (data position: epoch and
batches consumed in it, optimizer steps, best metric). It is written under a temporary name and renamed into
place, and `checkpoints/index.json` (itself replaced atomically) names the latest and the best one, so a run
killed at any instant leaves either the previous or the new checkpoint, never a half-written one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

TRAINER_STATE = "trainer_state.json"
INDEX = "index.json"


class _TiedHeadsFilter(logging.Filter):
    """Deformable DETR without box refinement ties its per-layer heads (one Parameter object); accelerate's
    safetensors writer stores one copy and warns about the others, which load_state restores through the tie."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedHeadsFilter())


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def usual_permissions(folder: str | Path) -> None:
    """Give files the mode the process's umask gives new files: the safetensors writer goes through a private
    temporary file (mode 0600) and renames it, so weights would be unreadable to the user's group and tools."""
    mask = os.umask(0)
    os.umask(mask)
    for path in Path(folder).rglob("*"):
        if path.is_file() and path.stat().st_mode & 0o777 == 0o600:
            path.chmod(0o666 & ~mask)


def read_index(root: str | Path) -> dict:
    path = Path(root) / INDEX
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"latest": None, "best": None, "steps": []}


def save_checkpoint(accelerator, root: str | Path, name: str, trainer_state: dict, *, best: bool = False,
                    keep: int = 1) -> Path:
    """Save the full training state as `root/name`; every process must call this (collective)."""
    root = Path(root)
    final, tmp = root / name, root / f".tmp-{name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))  # each process writes its own RNG file into the shared folder
    except Exception as error:  # disk full, permissions...: the index still names the last complete checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
        latest = read_index(root).get("latest")
        raise OSError(f"writing checkpoint {name} failed ({error}); "
                      + (f"the last complete one, {root / latest}, is intact (--resume latest)" if latest
                         else "no earlier checkpoint exists")) from error
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / TRAINER_STATE, trainer_state)
        usual_permissions(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        index = read_index(root)
        before = set(index.get("steps", [])) | {index.get("latest"), index.get("best")}
        index["latest"] = name
        if best:
            index["best"] = name
            index["best_metric"] = trainer_state.get("best_metric")
        steps = [n for n in index.get("steps", []) if n != name] + [name]
        index["steps"] = steps[-keep:] if keep > 0 else [name]
        write_json_atomic(root / INDEX, index)
        kept = set(index["steps"]) | {index["latest"], index["best"]}
        for old in before - kept - {None}:  # only after the index stopped pointing at them
            shutil.rmtree(root / old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume: str | None, root: str | Path) -> Path | None:
    """`"latest"` -> the index's latest checkpoint under `root` (None if there is none yet); else a folder."""
    if not resume:
        return None
    if resume == "latest":
        latest = read_index(root).get("latest")
        return Path(root) / latest if latest else None
    path = Path(resume)
    if not (path / TRAINER_STATE).exists():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no {TRAINER_STATE} inside); use "
                                "--resume latest or a folder under <output_dir>/checkpoints/")
    return path


def load_checkpoint(accelerator, folder: str | Path) -> dict:
    """Restore model, optimizer, scheduler and RNG states; return the trainer state (data position)."""
    accelerator.load_state(str(folder))
    return json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))
