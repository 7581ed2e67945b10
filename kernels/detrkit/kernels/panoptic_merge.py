"""Panoptic merge on CPU in one pass: which kept query wins each pixel, and the two areas per query that the
overlap test needs, from the low-resolution mask probabilities, without the (K, H, W) upsampled tensor.

    from detrkit.kernels.panoptic_merge import panoptic_merge
    merged = panoptic_merge(mask_probs, scores, (height, width), mask_threshold)
    if merged is not None:
        winner, won_area, own_area = merged

Equal, value for value, to the PyTorch steps it replaces (processing/segmentation_postprocessing.py):
`up = F.interpolate(mask_probs[None], size, mode="bilinear", align_corners=False)[0] * scores[:, None, None]`,
`winner = up.max(0).indices`, `won_area = bincount(winner)`, `own_area = (up >= mask_threshold).sum((1, 2))`.
Returns None where it cannot promise that, so that the caller runs those steps instead: tensors that are not
CPU float32, no compiler, DETRKIT_DISABLE_KERNELS=1, or a case where this torch's F.interpolate uses another CPU
kernel than the separable one the C++ code reproduces (see `interpolate_is_separable`).
"""
from __future__ import annotations

import threading
import warnings

import torch
import torch.nn.functional as F

from .build import load_kernel

_fma: dict[str, bool | None] = {}  # "mode" -> whether ATen's upsampling rounds as fused multiply-adds
_unavailable: list[str] = []  # why the kernel cannot be used, once found (empty: usable, or not yet asked)
_checked = False
_lock = threading.Lock()


class PanopticMergeError(ValueError):
    """Inputs the merge cannot give a meaningful answer for; the message names the problem."""


def interpolate_is_separable(num_queries: int, size: tuple[int, int]) -> bool:
    """Whether F.interpolate(bilinear) of a contiguous (1, K, h, w) float tensor to `size` runs ATen's separable
    CPU kernel (width pass, then height pass). upsample_bilinear2d_kernel_impl_float sends outputs with
    H + W <= 128, and 3-channel inputs on one thread, to its channels-last kernel, which rounds differently."""
    return size[0] + size[1] > 128 and not (torch.get_num_threads() == 1 and num_queries == 3)


def fused_multiply_add_mode() -> bool | None:
    """How this torch's separable bilinear kernel rounds: True if its `t0 * w0 + t1 * w1` (and the source index)
    are fused multiply-adds (the AVX2 / AVX-512 builds), False if not, None if the C++ code matches neither (the
    kernel is then not used). Found once per process by comparing both with F.interpolate on a probe."""
    if "mode" not in _fma:
        if not load_kernel("panoptic_cpu").loaded:
            return None
        probe = torch.rand(4, 13, 17, generator=torch.Generator().manual_seed(0))
        size = (71, 67)
        expected = F.interpolate(probe[None], size=size, mode="bilinear", align_corners=False)[0]
        upsample = torch.ops.detrkit_panoptic_cpu.upsample_bilinear
        _fma["mode"] = next((fma for fma in (True, False) if torch.equal(upsample(probe, *size, fma), expected)),
                            None)
    return _fma["mode"]


def kernel_ready() -> bool:
    """Whether the kernel is built, loaded and reproduces this torch's rounding; warns once when it is not."""
    from . import kernels_disabled

    global _checked
    if kernels_disabled():
        return False
    with _lock:
        if not _checked:
            status = load_kernel("panoptic_cpu")
            if not status.loaded:
                _unavailable.append(status.error or "not loaded")
            elif fused_multiply_add_mode() is None:
                _unavailable.append("its bilinear values differ from this torch's F.interpolate")
            if _unavailable:
                warnings.warn(f"detrkit: panoptic merge kernel unavailable, using PyTorch ops ({_unavailable[0]})",
                              RuntimeWarning, stacklevel=3)
            _checked = True
    return not _unavailable


def panoptic_merge(mask_probs: torch.Tensor, scores: torch.Tensor, size: tuple[int, int] | None,
                   mask_threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """One image's kept queries -> (winner (H, W) int32, won_area (K,) int64, own_area (K,) int64), or None.

    mask_probs (K, h, w) probabilities, scores (K,), size (H, W) or None for no resize. Raises
    PanopticMergeError when the upsampled probabilities would contain NaN (the winner of such a pixel is
    undefined).
    """
    if mask_probs.dim() != 3 or scores.shape != mask_probs.shape[:1] or len(mask_probs) == 0:
        raise PanopticMergeError(f"expected mask_probs (K, h, w) and scores (K,) with K >= 1, got "
                                 f"{tuple(mask_probs.shape)} and {tuple(scores.shape)}")
    size = tuple(mask_probs.shape[-2:]) if size is None else (int(size[0]), int(size[1]))
    same_size = size == tuple(mask_probs.shape[-2:])  # F.interpolate copies; so does the kernel
    if not (mask_probs.device.type == "cpu" and scores.device.type == "cpu" and mask_probs.dtype == torch.float32
            and scores.dtype == torch.float32 and (same_size or interpolate_is_separable(len(mask_probs), size))
            and kernel_ready()):
        return None
    winner, won_area, own_area, nan = torch.ops.detrkit_panoptic_cpu.merge(
        mask_probs.contiguous(), scores.contiguous(), size[0], size[1], float(mask_threshold),
        bool(fused_multiply_add_mode()))
    if nan:
        raise PanopticMergeError("the kept queries' mask probabilities contain NaN")
    return winner, won_area, own_area
