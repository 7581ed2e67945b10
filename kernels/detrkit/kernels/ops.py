"""`torch.ops.detrkit.multi_scale_deformable_attention`: the kernels as a torch custom op.

The op is defined in Python (torch.library.custom_op), so it exists before any kernel is built: it has a
fake implementation for torch.compile / export tracing and its autograd formula is a second custom op,
so both passes stay opaque single nodes in a compiled graph. The implementations call the JIT-built
libraries (`torch.ops.detrkit_msda_{cpu,cuda}`), building on first use; if that is impossible they
compute the PyTorch reference instead, so a traced graph always runs.

Inside the op, sampling locations and attention weights are computed in the "opmath" type of value
(float32 for float16/bfloat16 values, so half-precision value tensors do not cost location precision);
their gradients come back in their own dtypes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .build import load_kernel


def reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The op in plain PyTorch, for devices and builds without a kernel: bilinear `grid_sample` per level
    (align_corners=False, zero padding), weighted over levels x points. The model keeps its own copy
    (modeling/deformable_sampling.py, which must run without detrkit installed); this package imports
    nothing from modeling, and tests/test_kernels_cpu.py holds the two equal."""
    batch_size, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = spatial_shapes.tolist() if torch.is_tensor(spatial_shapes) else [tuple(s) for s in spatial_shapes]
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for level, (height, width) in enumerate(shapes):
        value_l = values[level].flatten(2).transpose(1, 2).reshape(batch_size * num_heads, head_dim, height, width)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B*H, Q, P, 2)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(batch_size * num_heads, 1, num_queries, num_levels * num_points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (B*H, D, Q)
    return output.view(batch_size, num_heads * head_dim, num_queries).transpose(1, 2).contiguous()


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _library(device: torch.device):
    """The loaded kernel namespace for this device, or None (then the op falls back to the reference)."""
    if device.type not in ("cpu", "cuda") or not load_kernel(device.type).loaded:
        return None
    return getattr(torch.ops, f"detrkit_msda_{device.type}")


def _prepare(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Contiguous tensors in the layout and dtypes the C++ kernels expect."""
    opmath, device = _opmath(value.dtype), value.device
    return (
        value.contiguous(),
        spatial_shapes.to(device=device, dtype=torch.long).contiguous(),
        level_start_index.to(device=device, dtype=torch.long).contiguous(),
        sampling_locations.to(opmath).contiguous(),
        attention_weights.to(opmath).contiguous(),
    )


def reference_mixed(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The reference, computed in the promoted dtype of its float inputs (grid_sample needs one dtype),
    returned in value's dtype like the kernels."""
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    output = reference(value.to(dtype), spatial_shapes, level_start_index, sampling_locations.to(dtype),
                       attention_weights.to(dtype))
    return output.to(value.dtype)


@torch.library.custom_op("detrkit::multi_scale_deformable_attention", mutates_args=())
def msda_forward(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                 sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    library = _library(value.device)
    if library is None:
        with torch.no_grad():
            return reference_mixed(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return library.forward(*_prepare(value, spatial_shapes, level_start_index, sampling_locations, attention_weights))


@msda_forward.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    batch, _, heads, head_dim = value.shape
    return value.new_empty(batch, sampling_locations.shape[1], heads * head_dim)


@torch.library.custom_op("detrkit::multi_scale_deformable_attention_backward", mutates_args=())
def msda_backward(grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                  level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                  attention_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients wrt value, sampling_locations and attention_weights, each in its input's dtype."""
    library = _library(value.device)
    if library is None:
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_() for t in (value, sampling_locations, attention_weights)]
            output = reference_mixed(inputs[0], spatial_shapes, level_start_index, inputs[1], inputs[2])
            return torch.autograd.grad(output, inputs, grad_output)
    grad_value, grad_locations, grad_weights = library.backward(
        grad_output.to(value.dtype).contiguous(),
        *_prepare(value, spatial_shapes, level_start_index, sampling_locations, attention_weights),
    )
    return grad_value, grad_locations.to(sampling_locations.dtype), grad_weights.to(attention_weights.dtype)


@msda_backward.register_fake
def _(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    # The kernels return contiguous gradients whatever the inputs' strides.
    return value.new_empty(value.shape), sampling_locations.new_empty(sampling_locations.shape), \
        attention_weights.new_empty(attention_weights.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = msda_backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    return grad_value, None, None, grad_locations, grad_weights


msda_forward.register_autograd(_backward, setup_context=_setup_context)
