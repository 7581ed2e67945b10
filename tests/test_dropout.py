"""The CPU training dropout of the memory savers: nn.Dropout's distribution and gradient, a bool mask saved."""
import pytest
import torch
import torch.nn.functional as F

from detrkit.training.memory_savers import MaskDropout as Dropout, bernoulli_drop_mask, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_rate_and_independence(p):
    torch.manual_seed(0)
    drop = bernoulli_drop_mask(torch.Size([400_000]), p, torch.device("cpu"))
    assert drop.dtype == torch.bool
    rate = drop.float().mean().item()
    assert abs(rate - p) < 4 * (p * (1 - p) / drop.numel()) ** 0.5  # 4 sigma
    # neighbours come from the same 64-bit word: they must still be independent
    pairs = (drop[:-1] & drop[1:]).float().mean().item()
    assert abs(pairs - p * p) < 4 * (p * p * (1 - p * p) / drop.numel()) ** 0.5


def test_forward_backward_scale_kept_elements_and_zero_dropped():
    torch.manual_seed(0)
    x = torch.randn(3, 50, 40, requires_grad=True)
    y = dropout(x, 0.2, training=True)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.8)
    grad_out = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, grad_out)
    torch.testing.assert_close(grad, torch.where(kept, grad_out / 0.8, 0.0))


def test_saves_only_a_bool_mask_and_follows_the_global_seed():
    x = torch.randn(64, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        torch.manual_seed(1)
        first = dropout(x, 0.3, training=True)
    assert saved == [torch.bool]
    torch.manual_seed(1)
    torch.testing.assert_close(dropout(x, 0.3, training=True), first)


def test_module_matches_nn_dropout_outside_cpu_training():
    x = torch.randn(4, 8)
    module = Dropout(0.1)
    assert module.eval()(x) is x or torch.equal(module(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    torch.manual_seed(0)
    expected = F.dropout(x, 0.5, True, inplace=False)
    torch.manual_seed(0)
    assert torch.equal(Dropout(0.5, inplace=True).train()(x.clone()), expected)
    assert Dropout(0.1).state_dict() == {}
