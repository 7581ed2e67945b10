"""`--device` as every command reads it: cpu, cuda, cuda:N or mps (ultralytics' `device=`, Trainer's `--use_cpu`).

Default (None): cuda when torch sees a GPU, else cpu. torch is imported only when a command runs, never for
--help.
"""
from __future__ import annotations

import re

from detrkit.errors import UsageError

DEVICE_HELP = "cpu, cuda, cuda:N or mps (default: cuda when a GPU is visible, else cpu)"
_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: str | None) -> str | None:
    """The spelling alone (no torch): refuse e.g. `gpu` or `cuda:x` before anything loads."""
    if name is not None and not _PATTERN.match(name):
        raise UsageError(f"--device {name!r}: expected cpu, cuda, cuda:N or mps")
    return name


def resolve_device(name: str | None) -> str:
    """The device to run on; an unavailable one is refused in a line that says what this machine has."""
    import torch

    check_device_name(name)
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            raise UsageError(f"--device {name}: this machine has {count} CUDA device(s) visible to torch")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError("--device mps: this torch has no MPS (Apple GPU) support here")
    return name
