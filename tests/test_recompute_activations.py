"""`recompute_activations`: the layer norm that keeps its output, the projection of a sum that keeps its two
terms, and the whole model's gradients with the option on and off."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detrkit.modeling import DeformableDetrConfig, DeformableDetrForObjectDetection
from detrkit.modeling.deformable_attention import MultiScaleDeformableAttention
from detrkit.modeling.layer_norm import LayerNorm, _OutputSavingLayerNorm
from detrkit.modeling.linear_of_sum import _LinearOfSum, linear_of_sum

from conftest import padded_batch, random_labels


def saved_storages(fn, *args):
    """Run fn and return (output, the data pointers of every tensor autograd saved for backward)."""
    pointers = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: pointers.append(t.untyped_storage().data_ptr()) or t, lambda t: t):
        out = fn(*args)
    return out, set(pointers)


def affine_layer_norm(d=6, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    norm = LayerNorm(d, keep_output_only=True).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5).mul_(torch.tensor([1.0, -1.0]).repeat(d // 2).to(dtype))
        norm.bias.uniform_(-1, 1)
    return norm


def test_layer_norm_gradcheck_in_float64():
    norm = affine_layer_norm()
    x = (torch.randn(3, 4, 6, dtype=torch.float64) * 3 + 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: _OutputSavingLayerNorm.apply(x, [6], w, b, 1e-5),
                                    (x, norm.weight, norm.bias))


def test_layer_norm_matches_nn_layer_norm_and_keeps_no_input():
    norm = affine_layer_norm(d=32, dtype=torch.float32)
    reference = nn.LayerNorm(32)
    reference.load_state_dict(norm.state_dict())  # same parameter names
    x = torch.randn(2, 50, 32, requires_grad=True)
    out, saved = saved_storages(norm, x)
    assert type(out.grad_fn).__name__.startswith("_OutputSavingLayerNorm")
    assert x.untyped_storage().data_ptr() not in saved and out.untyped_storage().data_ptr() in saved
    expected = reference(x)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, [x, norm.weight, norm.bias], grad)
    theirs = torch.autograd.grad(expected, [x, reference.weight, reference.bias], grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["zero weight", "bias dwarfs weight", "no grad", "bfloat16", "off"])
def test_layer_norm_falls_back_where_the_output_cannot_give_the_input(case):
    norm = affine_layer_norm(dtype=torch.float32)
    norm.keep_output_only = case != "off"
    with torch.no_grad():
        if case == "zero weight":
            norm.weight[2] = 0.0
        if case == "bias dwarfs weight":
            norm.weight[2], norm.bias[2] = 1e-4, 1.0
    x = torch.randn(4, 6, requires_grad=True)
    if case == "bfloat16":
        norm, x = norm.bfloat16(), x.detach().bfloat16().requires_grad_()
    with torch.set_grad_enabled(case != "no grad"):
        out = norm(x)
    assert out.grad_fn is None or "OutputSaving" not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, F.layer_norm(x, (6,), norm.weight, norm.bias))


def test_layer_norm_compiles_in_training_without_graph_breaks():
    norm = affine_layer_norm(d=8, dtype=torch.float32)
    x = torch.randn(3, 8, requires_grad=True)
    out = torch.compile(norm, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(out, F.layer_norm(x, (8,), norm.weight, norm.bias))
    out.sum().backward()
    assert x.grad is not None


def test_linear_of_sum_gradcheck_with_broadcast_position():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)  # one embedding for the whole batch
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_LinearOfSum.apply, (x, pos, weight, bias))
    assert torch.autograd.gradcheck(lambda x, pos, w: _LinearOfSum.apply(x, pos, w, None), (x, pos, weight))


def test_linear_of_sum_keeps_the_terms_not_the_sum():
    linear = nn.Linear(8, 3)
    x, pos = torch.randn(2, 7, 8, requires_grad=True), torch.randn(2, 7, 8, requires_grad=True)
    out, saved = saved_storages(linear_of_sum, x, pos, linear.weight, linear.bias)
    assert saved == {t.untyped_storage().data_ptr() for t in (x, pos, linear.weight)}
    expected = linear(x + pos)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    params = [x, pos, linear.weight, linear.bias]
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(expected, params, grad)):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        assert linear_of_sum(x, pos, linear.weight, linear.bias).grad_fn is None


def test_deformable_attention_calls_hooked_projections_with_the_same_result():
    torch.manual_seed(0)
    attention = MultiScaleDeformableAttention(d_model=16, n_levels=1, n_heads=2, n_points=2,
                                              recompute_activations=True)
    shapes, starts = torch.tensor([[3, 4]]), torch.tensor([0])
    query, pos, value = torch.randn(1, 5, 16), torch.randn(1, 5, 16), torch.randn(1, 12, 16)
    reference_points = torch.rand(1, 5, 1, 2)
    fused, _ = attention(query, reference_points, value, shapes, starts, query_pos=pos)  # one stacked matmul
    calls = []
    hook = attention.attention_weights.register_forward_hook(lambda *args: calls.append("attention_weights"))
    hooked, _ = attention(query, reference_points, value, shapes, starts, query_pos=pos)
    hook.remove()
    assert calls == ["attention_weights"]
    torch.testing.assert_close(hooked, fused)


def test_model_gradients_equal_with_and_without_recomputation():
    pixel_values, pixel_mask = padded_batch()
    labels = random_labels(2, num_labels=3)
    grads = []
    for recompute in (True, False):
        torch.manual_seed(0)
        config = DeformableDetrConfig(backbone="resnet18", d_model=32, encoder_layers=2, decoder_layers=2,
                                      encoder_ffn_dim=64, decoder_ffn_dim=64, num_labels=3, dropout=0.0,
                                      recompute_activations=recompute)
        model = DeformableDetrForObjectDetection(config).train()
        with torch.no_grad():  # layer norms away from their initial (1, 0), as after training
            for module in model.modules():
                if isinstance(module, nn.LayerNorm):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.5, 0.5)
        model(pixel_values, pixel_mask=pixel_mask, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)
