"""`detrkit train --device`: the device choice handed to accelerate, which owns device placement in training.

cpu is accelerate's `cpu=True`; cuda:N makes GPU N the only one the run sees (CUDA_VISIBLE_DEVICES, set before
CUDA starts), which accelerate cannot do for a run it launched over several processes: that is refused.
"""
from __future__ import annotations

import os
import sys

from detrkit.errors import UsageError


def uses_cpu(config) -> bool:
    """accelerate's `cpu=`: --device cpu, or a launcher's ACCELERATE_USE_CPU."""
    from accelerate.utils import parse_flag_from_env

    return config.device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU")


def select_device(config, environ=os.environ) -> None:
    """Make --device cuda:N / cuda / mps true before anything starts CUDA; refuse what cannot be honoured."""
    device = config.device
    if device is None or device == "cpu":
        return
    if device.startswith("cuda:"):
        if int(environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError(f"--device {device}: a run launched over several processes uses one GPU per process; "
                             "choose them with CUDA_VISIBLE_DEVICES (or accelerate launch --gpu_ids) instead")
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            raise UsageError(f"--device {device}: CUDA already started in this process; set CUDA_VISIBLE_DEVICES "
                             "before it starts instead")
        index = int(device.split(":")[1])
        visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if visible and index >= len(visible):
            raise UsageError(f"--device {device}: CUDA_VISIBLE_DEVICES={','.join(visible)} shows {len(visible)} GPU(s)")
        environ["CUDA_VISIBLE_DEVICES"] = visible[index] if visible else str(index)
    from detrkit.cli.device_option import resolve_device

    resolve_device("cuda" if device.startswith("cuda") else device)  # refuse a device this machine lacks
