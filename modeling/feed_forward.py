"""The transformer layers' feed-forward block, fc2(act(fc1(x))), optionally recomputing its hidden activation.

The hidden activation is encoder_ffn_dim / d_model = 4 (DETR: 8) times wider than the block's input, and
autograd keeps it for the ReLU mask and fc2's weight gradient. In Deformable DETR's encoder at 800x1066 that
is 73 MB a layer, 0.43 GiB of a CPU training step's peak memory. With `recompute_activations` (the
default) only the block's input is kept, and relu(fc1(x)) is recomputed in backward: one more fc1 matmul,
about 5% of a CPU training step. It covers the papers' setting (ReLU, no activation dropout) outside
autocast, with plain nn.Linear modules; anything else, and inference, runs the modules as they are.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .linear_of_sum import is_plain_linear


class _ReluFeedForward(torch.autograd.Function):
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


def feed_forward(x: torch.Tensor, fc1: nn.Linear, activation: nn.Module, activation_dropout: nn.Module,
                 fc2: nn.Linear, recompute: bool) -> torch.Tensor:
    recomputable = (
        recompute
        and torch.is_grad_enabled()
        and isinstance(activation, nn.ReLU)
        and is_plain_linear(fc1)
        and is_plain_linear(fc2)
        and (activation_dropout.p == 0.0 or not activation_dropout.training)
        and not torch.is_autocast_enabled(x.device.type)
    )
    if recomputable:
        return _ReluFeedForward.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    return fc2(activation_dropout(activation(fc1(x))))
