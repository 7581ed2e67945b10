"""The memory savers' feed-forward block that recomputes its hidden activation: same outputs and gradients as the modules,
less saved, and the plain path wherever recomputation does not apply."""
import pytest
import torch
from torch import nn

from detrkit.training.memory_savers import ReluFeedForwardFunction, feed_forward


def modules(seed=0, d=6, hidden=10, dtype=torch.float64):
    torch.manual_seed(seed)
    return (nn.Linear(d, hidden).to(dtype), nn.ReLU(), nn.Dropout(0.0), nn.Linear(hidden, d).to(dtype))


def test_gradcheck_in_float64():
    fc1, _, _, fc2 = modules()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ReluFeedForwardFunction.apply, (x, fc1.weight, fc1.bias, fc2.weight, fc2.bias))


def test_matches_the_modules_and_saves_only_the_input():
    fc1, act, drop, fc2 = modules(dtype=torch.float32, d=16, hidden=64)
    x = torch.randn(3, 7, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        ours = feed_forward(x, fc1, act, drop, fc2)
    # the input and the weights, never the (3, 7, 64) hidden activation
    assert sorted(saved) == sorted([x.shape, fc1.weight.shape, fc1.bias.shape, fc2.weight.shape])
    reference = fc2(act(fc1(x)))
    torch.testing.assert_close(ours, reference)
    grad = torch.randn_like(ours)
    params = [x, fc1.weight, fc1.bias, fc2.weight, fc2.bias]
    for a, b in zip(torch.autograd.grad(ours, params, grad), torch.autograd.grad(reference, params, grad)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case", ["gelu", "activation dropout", "no grad", "hooked fc1"])
def test_other_settings_run_the_modules(case):
    fc1, act, drop, fc2 = modules(dtype=torch.float32)
    if case == "gelu":
        act = nn.GELU()
    if case == "activation dropout":
        drop = nn.Dropout(0.5).train()
    calls = []
    if case == "hooked fc1":  # a user's hook must still see the call
        fc1.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(2, 6, requires_grad=True)
    with torch.set_grad_enabled(case != "no grad"):
        out = feed_forward(x, fc1, act, drop, fc2)
    assert out.grad_fn is None or "ReluFeedForward" not in type(out.grad_fn).__name__
    assert calls == ([1] if case == "hooked fc1" else [])

