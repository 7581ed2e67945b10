"""Memory savers for training on the CPU: the same model, the same weights and state-dict keys, less kept for
backward. Opt-in (`memory_savers: auto|on|off` in the training config; auto = on for CPU training), applied to a
built model by `apply_memory_savers(model)`; the model files themselves hold the papers' plain modules.

Four savers, each exact (gradients equal the plain modules' to rounding, tests/test_memory_savers*.py):
- feed-forward blocks keep their input only and recompute relu(fc1(x)) in backward (the hidden activation is
  4-8x wider than the input);
- layer norms keep their output instead of their input (Apex's memory-efficient LayerNorm; CPU only, as the
  check that makes it exact reads the weights, a device sync elsewhere);
- the deformable attention's projections of query + position keep the two terms (kept anyway by other
  consumers), not their sum, and run as one matmul over the stacked weights;
- CPU dropout keeps a bool mask drawn four 16-bit uniforms per 64-bit random word, instead of a float mask
  drawn element by element.

The first and third go through the seams the model's modules document (detrkit.modeling.seams:
`feed_forward_function` of the transformer layers, `query_projection_function` of the deformable attentions); dropout and layer norm modules are
replaced by drop-in subclasses sharing their parameters. No new parameters, buffers or hooks, nothing a checkpoint
sees. Where a saver does not apply (inference, autocast, another activation, hooked or adapted linears, CUDA),
the plain forward runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from detrkit.modeling.seams import clear_seam, set_seam

# --- feed-forward: recompute the hidden activation ------------------------------------------------------------


class ReluFeedForwardFunction(torch.autograd.Function):
    """fc2(relu(fc1(x))) that saves x and the weights, not relu(fc1(x))."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        ctx.save_for_backward(x, w1, b1, w2)
        return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)

    @staticmethod
    def backward(ctx, grad_output):
        x, w1, b1, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        x2d = x.reshape(-1, x.shape[-1])
        grad2d = grad_output.reshape(-1, grad_output.shape[-1])
        hidden = F.relu(F.linear(x2d, w1, b1))  # the recomputation
        grad_x = grad_w1 = grad_b1 = grad_w2 = grad_b2 = None
        if need_w2:
            grad_w2 = grad2d.t() @ hidden
        if need_b2:
            grad_b2 = grad2d.sum(0)
        if need_x or need_w1 or need_b1:
            grad_hidden = grad2d @ w2
            grad_hidden.mul_(hidden.sign_())  # ReLU's derivative, in place: relu(.) >= 0, so sign is 0 or 1
            del hidden
            if need_w1:
                grad_w1 = grad_hidden.t() @ x2d
            if need_b1:
                grad_b1 = grad_hidden.sum(0)
            if need_x:
                grad_x = (grad_hidden @ w1).view(x.shape)
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


def is_plain_linear(module: nn.Module) -> bool:
    """Whether calling F.linear on the module's weights is the same as calling it: an nn.Linear itself (not an
    adapter or quantised subclass) with no forward hooks, so nothing a user attached is skipped."""
    return (
        type(module) is nn.Linear
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and not getattr(_module, "_global_forward_hooks", None)
        and not getattr(_module, "_global_forward_pre_hooks", None)
    )


def feed_forward(x: torch.Tensor, fc1: nn.Linear, activation: nn.Module, activation_dropout: nn.Module,
                 fc2: nn.Linear) -> torch.Tensor:
    """fc2(activation_dropout(activation(fc1(x)))), recomputing the hidden activation in backward where exact."""
    recomputable = (
        torch.is_grad_enabled()
        and isinstance(activation, nn.ReLU)
        and is_plain_linear(fc1)
        and is_plain_linear(fc2)
        and (activation_dropout.p == 0.0 or not activation_dropout.training)
        and not torch.is_autocast_enabled(x.device.type)
    )
    if recomputable:
        return ReluFeedForwardFunction.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    return fc2(activation_dropout(activation(fc1(x))))


# --- layer norm: keep the output ------------------------------------------------------------------------------

_MAX_BIAS_TO_WEIGHT = 1e3


class OutputSavingLayerNormFunction(torch.autograd.Function):
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
    """x_hat = (y - beta) / gamma is exact to fp32 rounding when every gamma is away from zero relative to its
    beta; the check reads the weights (a device sync off the CPU)."""
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


class OutputSavingLayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and outputs) that saves its output for backward, not its input, where
    that is exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _output_recovers_input(x, self.weight, self.bias):
            return OutputSavingLayerNormFunction.apply(x, list(self.normalized_shape), self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


# --- linear of a sum: keep the terms --------------------------------------------------------------------------


class LinearOfSumFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pos, weight, bias):
        ctx.save_for_backward(x, pos, weight)
        return F.linear(x + pos, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        x, pos, weight = ctx.saved_tensors
        need_x, need_pos, need_weight, need_bias = ctx.needs_input_grad
        grad2d = grad_output.reshape(-1, grad_output.shape[-1])
        grad_sum = grad_weight = grad_bias = None
        if need_x or need_pos:
            grad_sum = grad_output @ weight
        if need_weight:
            grad_weight = grad2d.t() @ (x + pos).reshape(-1, weight.shape[1])  # the recomputation
        if need_bias:
            grad_bias = grad2d.sum(0)
        # d(x + pos) passes the same gradient to both, as autograd's AddBackward does, summed back over any
        # dimension the sum broadcast (one pos for the whole batch)
        grad_x = grad_sum.sum_to_size(x.shape) if need_x else None
        grad_pos = grad_sum.sum_to_size(pos.shape) if need_pos else None
        return grad_x, grad_pos, grad_weight, grad_bias


def linear_of_sum(x: torch.Tensor, pos: torch.Tensor | None, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x + pos), keeping x and pos for backward (not their sum) where gradients are recorded."""
    if pos is None:
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
        return LinearOfSumFunction.apply(x, pos, weight, bias)
    return F.linear(x + pos, weight, bias)


def stacked_query_projection(query, query_pos, sampling_offsets: nn.Linear, attention_weights: nn.Linear):
    """A deformable attention's sampling offsets and attention logits of query + query_pos as one matmul over the
    stacked weights that keeps the two terms (hooked or adapted linears run as they are)."""
    if not (is_plain_linear(sampling_offsets) and is_plain_linear(attention_weights)):
        query = query if query_pos is None else query + query_pos
        return sampling_offsets(query), attention_weights(query)
    weight = torch.cat([sampling_offsets.weight, attention_weights.weight])
    bias = torch.cat([sampling_offsets.bias, attention_weights.bias])
    projected = linear_of_sum(query, query_pos, weight, bias)
    return projected.split([sampling_offsets.out_features, attention_weights.out_features], -1)


# --- dropout: a bool mask -------------------------------------------------------------------------------------

_UNIFORM_16 = 1 << 16


def bernoulli_drop_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool tensor of `shape`, each element True with probability round(p * 2^16) / 2^16 (within 2^-17 of p),
    from the global generator."""
    numel = shape.numel()
    words = torch.empty(-(-numel // 4), dtype=torch.int64, device=device).random_(-(2**63), None)  # 64 random bits
    parts = words.view(torch.int16)[:numel]  # four independent uniform integers in [-32768, 32767] per word
    return (parts < round(p * _UNIFORM_16) - _UNIFORM_16 // 2).view(shape)


class _DropByMask(torch.autograd.Function):
    """y = x * scale, zero where `drop`; saves only the bool mask."""

    @staticmethod
    def forward(ctx, x, drop, scale):
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return (x * scale).masked_fill_(drop, 0.0)

    @staticmethod
    def backward(ctx, grad_output):
        (drop,) = ctx.saved_tensors
        return (grad_output * ctx.scale).masked_fill_(drop, 0.0), None, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout's distribution; on CPU in training, a bool mask (CUDA's F.dropout already keeps one)."""
    if not training or p == 0.0 or x.device.type != "cpu" or not x.is_floating_point() or p >= 1.0:
        return F.dropout(x, p, training)
    return _DropByMask.apply(x, bernoulli_drop_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class MaskDropout(nn.Dropout):
    """`nn.Dropout` (same arguments, no state) with the CPU training path above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


# --- applying them --------------------------------------------------------------------------------------------

SEAMS = {"feed_forward_function": feed_forward, "query_projection_function": stacked_query_projection}


def _saving_module(module: nn.Module) -> nn.Module | None:
    """The drop-in replacement of an exact nn.Dropout / nn.LayerNorm without hooks (sharing its parameters)."""
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    if type(module) is nn.Dropout:
        return MaskDropout(module.p, module.inplace)
    if type(module) is nn.LayerNorm:
        return _with_parameters_of(module, OutputSavingLayerNorm)
    return None


def _plain_module(module: nn.Module) -> nn.Module | None:
    if type(module) is MaskDropout:
        return nn.Dropout(module.p, module.inplace)
    if type(module) is OutputSavingLayerNorm:
        return _with_parameters_of(module, nn.LayerNorm)
    return None


def _with_parameters_of(norm: nn.LayerNorm, cls: type) -> nn.LayerNorm:
    replacement = cls(norm.normalized_shape, norm.eps, elementwise_affine=False)  # no parameters of its own
    replacement.elementwise_affine = norm.elementwise_affine
    replacement.weight, replacement.bias = norm.weight, norm.bias
    replacement.train(norm.training)
    return replacement


def _replace_children(model: nn.Module, replacement_of) -> None:
    replaced = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) not in replaced:
                replaced[id(child)] = replacement_of(child)
            if replaced[id(child)] is not None:
                setattr(parent, name, replaced[id(child)])


def apply_memory_savers(model: nn.Module) -> nn.Module:
    """Switch the savers on, in place (returns the model): exact-type nn.Dropout and nn.LayerNorm modules, and the
    seams of the module types that declare them (detrkit.modeling.seams). Weights, state-dict keys and outputs stay
    as they are; `remove_memory_savers` undoes it."""
    _replace_children(model, _saving_module)
    for seam, function in SEAMS.items():
        set_seam(model, seam, function)
    return model


def remove_memory_savers(model: nn.Module) -> nn.Module:
    """The plain modules back, in place."""
    _replace_children(model, _plain_module)
    for seam, function in SEAMS.items():
        clear_seam(model, seam, function)  # only the savers' own: a seam someone else set stays
    return model


def memory_savers_wanted(option: str, device: torch.device | str) -> bool:
    """`memory_savers` of the training config: "on", "off", or "auto" (on for CPU training, where they save
    memory for a few percent of time; CUDA has its own fused kernels)."""
    if option not in ("auto", "on", "off"):
        raise ValueError(f"memory_savers must be 'auto', 'on' or 'off', got {option!r}")
    return option == "on" or (option == "auto" and torch.device(device).type == "cpu")


__all__ = ["apply_memory_savers", "remove_memory_savers", "memory_savers_wanted", "feed_forward", "linear_of_sum",
           "stacked_query_projection", "dropout", "bernoulli_drop_mask", "MaskDropout", "OutputSavingLayerNorm"]
