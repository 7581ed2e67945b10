"""LayerNorm that keeps its output, not its input, for backward (as Apex's memory-efficient LayerNorm does).

In a post-norm transformer layer both LayerNorms' outputs are kept anyway: the first one's by the feed-forward
block, the second one's by the next layer's projections. Autograd's LayerNorm also keeps its input, a second
tensor of the same size. Backward needs only the normalised input, x_hat = (y - beta) / gamma, which the
output gives back; so keeping the output saves two (tokens x d_model) tensors a layer: 0.2 GiB of a Deformable
DETR R50 training step at 800x1066, for two elementwise passes in backward.

The division needs every gamma away from zero relative to its beta (|beta| <= 1e3 |gamma| keeps x_hat to about
1e-4 of fp32's precision); that check reads the weights, a device sync on a GPU, so the memory-efficient path
runs on CPU only. Elsewhere, and in inference, under autocast or torch.compile (which plans its own
recomputation) or with other dtypes, it is nn.LayerNorm.
"""
import torch
import torch.nn.functional as F
from torch import nn

_MAX_BIAS_TO_WEIGHT = 1e3


class _OutputSavingLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps):
        output, _, rstd = torch.native_layer_norm(x, normalized_shape, weight, bias, eps)
        ctx.normalized_shape = normalized_shape
        ctx.save_for_backward(output, weight, bias, rstd)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        output, weight, bias, rstd = ctx.saved_tensors
        normalized = (output - bias).div_(weight)
        # ATen's backward recomputes x_hat = (input - mean) * rstd; given x_hat itself with mean 0 and rstd 1 it
        # returns the weight and bias gradients as they are and the input gradient divided by rstd.
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_layer_norm_backward(
            grad_output, normalized, ctx.normalized_shape, torch.zeros_like(rstd), torch.ones_like(rstd),
            weight, bias, [ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]],
        )
        if grad_x is not None:
            grad_x.mul_(rstd)
        return grad_x, None, grad_weight, grad_bias, None


def _output_recovers_input(x: torch.Tensor, weight, bias) -> bool:
    return (
        x.device.type == "cpu"
        and not torch.compiler.is_compiling()  # the weight check below would break a compiled graph
        and weight is not None
        and bias is not None
        and x.dtype == weight.dtype == bias.dtype
        and x.dtype in (torch.float32, torch.float64)
        and torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and bool((weight != 0).all())
        and bool((bias.abs() <= _MAX_BIAS_TO_WEIGHT * weight.abs()).all())
    )


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and outputs) that, with `keep_output_only`, saves its output for backward
    instead of its input where that is exact (see the module docstring)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, keep_output_only: bool = False, **kwargs):
        super().__init__(normalized_shape, eps=eps, **kwargs)
        self.keep_output_only = keep_output_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep_output_only and _output_recovers_input(x, self.weight, self.bias):
            return _OutputSavingLayerNorm.apply(x, list(self.normalized_shape), self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
