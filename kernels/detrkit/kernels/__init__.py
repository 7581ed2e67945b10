"""Fast multi-scale deformable attention for Deformable DETR: C++ (CPU) and CUDA kernels, built just in time.

    from detrkit.kernels import multi_scale_deformable_attention
    output = multi_scale_deformable_attention(value, spatial_shapes, level_start_index,
                                              sampling_locations, attention_weights)

Same signature, shapes and results as the PyTorch reference
`detrkit.modeling.deformable_sampling.multi_scale_deformable_attention`. The call runs the CUDA
kernel for CUDA tensors, the CPU kernel for CPU tensors, and the reference when `use_kernel=False`, when
DETRKIT_DISABLE_KERNELS=1, on other devices, or when the kernel cannot be built (a one-line warning says why,
once). Nothing is compiled at import; the first call builds (about a minute) into a cache, see `build.py`.

Also here: `detrkit.kernels.panoptic_merge`, the fused CPU pass of panoptic post-processing (upsample, weight,
argmax, areas), used by processing/segmentation_postprocessing.py when available.
"""
from __future__ import annotations

import os
import warnings

import torch

from .build import KernelStatus, build_directory, find_cuda_home, kernel_status, load_kernel
from .ops import msda_backward, msda_forward, reference_mixed

__all__ = ["multi_scale_deformable_attention", "load_kernel", "kernel_status", "kernels_disabled", "KernelStatus",
           "build_directory", "find_cuda_home", "check_inputs"]

_warned: set[str] = set()


def kernels_disabled() -> bool:
    """True when DETRKIT_DISABLE_KERNELS is set to a true value (forces the PyTorch reference)."""
    return os.environ.get("DETRKIT_DISABLE_KERNELS", "0").lower() not in ("", "0", "false", "no")


def multi_scale_deformable_attention(value: torch.Tensor, spatial_shapes: torch.Tensor,
                                     level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                                     attention_weights: torch.Tensor, use_kernel: bool = True) -> torch.Tensor:
    """Multi-scale deformable attention (Deformable DETR eq. 3).

    Args:
        value: (B, S, H, D) float16 / bfloat16 / float32 / float64, S = sum of h_l * w_l.
        spatial_shapes: (L, 2) integer (h_l, w_l).
        level_start_index: (L,) integer start of each level in S.
        sampling_locations: (B, Q, H, L, P, 2) normalised (x, y); outside [0, 1] samples zero padding.
        attention_weights: (B, Q, H, L, P).
        use_kernel: False forces the PyTorch reference (the model passes `not config.disable_custom_kernels`).

    Returns:
        (B, Q, H * D) in value's dtype.
    """
    compiling = torch.compiler.is_compiling()
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                 check_values=not compiling)
    if use_kernel and not kernels_disabled() and _kernel_ready(value.device, compiling):
        return msda_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return reference_mixed(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


def _kernel_ready(device: torch.device, compiling: bool) -> bool:
    if device.type not in ("cpu", "cuda"):
        return False
    if compiling:  # no building while tracing; the op itself builds or falls back when the graph runs
        return True
    status = load_kernel(device.type)
    if not status.loaded and device.type not in _warned:
        _warned.add(device.type)
        warnings.warn(f"detrkit: {device.type} multi-scale deformable attention kernel unavailable, using the "
                      f"PyTorch reference ({status.error})", RuntimeWarning, stacklevel=3)
    return status.loaded


def check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                 check_values: bool = True) -> None:
    """Raise a ValueError / TypeError naming the offending argument, expected vs got. With `check_values`,
    also compare spatial_shapes and level_start_index with value's length when they are CPU tensors."""
    tensors = dict(value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                   sampling_locations=sampling_locations, attention_weights=attention_weights)
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    for name in ("value", "sampling_locations", "attention_weights"):
        if not tensors[name].is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got {tensors[name].dtype}")
    for name in ("spatial_shapes", "level_start_index"):
        if tensors[name].is_floating_point() or tensors[name].is_complex() or tensors[name].dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got {tensors[name].dtype}")
    if value.dim() != 4:
        raise ValueError(f"value must be (batch, sum of h*w, heads, head_dim), got shape {tuple(value.shape)}")
    batch, length, heads, _ = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError("sampling_locations must be (batch, queries, heads, levels, points, 2), got shape "
                         f"{tuple(sampling_locations.shape)}")
    _, queries, _, levels, points, _ = sampling_locations.shape
    expected = (batch, queries, heads, levels, points, 2)
    if tuple(sampling_locations.shape) != expected:
        raise ValueError(f"sampling_locations must have shape (batch, queries, heads, levels, points, 2) = "
                         f"{expected} to match value {tuple(value.shape)}, got {tuple(sampling_locations.shape)}")
    if tuple(attention_weights.shape) != expected[:5]:
        raise ValueError(f"attention_weights must have shape {expected[:5]} (sampling_locations without the last "
                         f"dim), got {tuple(attention_weights.shape)}")
    if tuple(spatial_shapes.shape) != (levels, 2):
        raise ValueError(f"spatial_shapes must have shape ({levels}, 2) for {levels} levels, got "
                         f"{tuple(spatial_shapes.shape)}")
    if tuple(level_start_index.shape) != (levels,):
        raise ValueError(f"level_start_index must have shape ({levels},), got {tuple(level_start_index.shape)}")
    for name, tensor in tensors.items():
        allowed = (value.device, torch.device("cpu")) if name in ("spatial_shapes", "level_start_index") else (
            value.device,)
        if tensor.device not in allowed:
            raise ValueError(f"{name} is on {tensor.device} but value is on {value.device}")
    if check_values and spatial_shapes.device.type == "cpu" and level_start_index.device.type == "cpu":
        sizes = (spatial_shapes[:, 0] * spatial_shapes[:, 1]).tolist()
        if sum(sizes) != length:
            raise ValueError(f"value has {length} positions but spatial_shapes {spatial_shapes.tolist()} cover "
                             f"{sum(sizes)}")
        starts = [sum(sizes[:level]) for level in range(levels)]
        if level_start_index.tolist() != starts:
            raise ValueError(f"level_start_index must be {starts} for spatial_shapes {spatial_shapes.tolist()}, got "
                             f"{level_start_index.tolist()}")
