"""The memory savers (`detrkit.training.memory_savers`): the layer norm that keeps its output, the projection of a
sum that keeps its two terms, and a whole model's gradients, outputs and state dict with the savers on and off."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detrkit.modeling import DeformableDetrConfig, DeformableDetrForObjectDetection, DetrConfig, DetrForObjectDetection
from detrkit.modeling.deformable_attention import MultiScaleDeformableAttention
from detrkit.training.memory_savers import (
    SEAMS,
    LinearOfSumFunction,
    OutputSavingLayerNorm,
    OutputSavingLayerNormFunction,
    apply_memory_savers,
    linear_of_sum,
    memory_savers_wanted,
    remove_memory_savers,
)

from helpers import padded_batch, random_labels


def saved_storages(fn, *args):
    """Run fn and return (output, the data pointers of every tensor autograd saved for backward)."""
    pointers = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: pointers.append(t.untyped_storage().data_ptr()) or t, lambda t: t):
        out = fn(*args)
    return out, set(pointers)


def affine_layer_norm(d=6, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    norm = OutputSavingLayerNorm(d).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5).mul_(torch.tensor([1.0, -1.0]).repeat(d // 2).to(dtype))
        norm.bias.uniform_(-1, 1)
    return norm


def test_layer_norm_gradcheck_in_float64():
    norm = affine_layer_norm()
    x = (torch.randn(3, 4, 6, dtype=torch.float64) * 3 + 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: OutputSavingLayerNormFunction.apply(x, [6], w, b, 1e-5),
                                    (x, norm.weight, norm.bias))


def test_layer_norm_matches_nn_layer_norm_and_keeps_no_input():
    norm = affine_layer_norm(d=32, dtype=torch.float32)
    reference = nn.LayerNorm(32)
    reference.load_state_dict(norm.state_dict())  # same parameter names
    x = torch.randn(2, 50, 32, requires_grad=True)
    out, saved = saved_storages(norm, x)
    assert type(out.grad_fn).__name__.startswith("OutputSavingLayerNormFunction")
    assert x.untyped_storage().data_ptr() not in saved and out.untyped_storage().data_ptr() in saved
    expected = reference(x)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, [x, norm.weight, norm.bias], grad)
    theirs = torch.autograd.grad(expected, [x, reference.weight, reference.bias], grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["zero weight", "bias dwarfs weight", "no grad", "bfloat16"])
def test_layer_norm_falls_back_where_the_output_cannot_give_the_input(case):
    norm = affine_layer_norm(dtype=torch.float32)
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
    assert torch.autograd.gradcheck(LinearOfSumFunction.apply, (x, pos, weight, bias))
    assert torch.autograd.gradcheck(lambda x, pos, w: LinearOfSumFunction.apply(x, pos, w, None), (x, pos, weight))


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


def test_deformable_attention_stacked_projection_equals_the_plain_one_and_calls_hooked_projections():
    torch.manual_seed(0)
    attention = MultiScaleDeformableAttention(d_model=16, n_levels=1, n_heads=2, n_points=2)
    shapes, starts = torch.tensor([[3, 4]]), torch.tensor([0])
    query, pos, value = torch.randn(1, 5, 16), torch.randn(1, 5, 16), torch.randn(1, 12, 16)
    reference_points = torch.rand(1, 5, 1, 2)
    plain, _ = attention(query, reference_points, value, shapes, starts, query_pos=pos)
    apply_memory_savers(attention)
    fused, _ = attention(query, reference_points, value, shapes, starts, query_pos=pos)  # one stacked matmul
    torch.testing.assert_close(fused, plain)
    calls = []
    hook = attention.attention_weights.register_forward_hook(lambda *args: calls.append("attention_weights"))
    hooked, _ = attention(query, reference_points, value, shapes, starts, query_pos=pos)
    hook.remove()
    assert calls == ["attention_weights"]
    torch.testing.assert_close(hooked, fused)


def tiny_model(family):
    common = dict(backbone="resnet18", d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64,
                  decoder_ffn_dim=64, num_labels=3, dropout=0.0, num_queries=8, encoder_attention_heads=2,
                  decoder_attention_heads=2)
    torch.manual_seed(0)
    if family == "detr":
        model = DetrForObjectDetection(DetrConfig(**common, auxiliary_loss=True))
    else:
        model = DeformableDetrForObjectDetection(DeformableDetrConfig(**common, with_box_refine=True))
    with torch.no_grad():  # layer norms away from their initial (1, 0), as after training
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.train()


def loss_and_grads(model, pixel_values, pixel_mask, labels):
    model.zero_grad()
    loss = model(pixel_values, pixel_mask=pixel_mask, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["detr", "deformable"])
def test_model_same_weights_keys_loss_and_gradients_with_the_savers(family):
    pixel_values, pixel_mask = padded_batch()
    labels = random_labels(2, num_labels=3)
    model = tiny_model(family)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain_loss, plain_grads = loss_and_grads(model, pixel_values, pixel_mask, labels)

    apply_memory_savers(model)
    swapped = {type(m).__name__ for m in model.modules()}
    assert {"MaskDropout", "OutputSavingLayerNorm"} <= swapped
    seams = {seam for m in model.modules() for seam in SEAMS if seam in vars(m)}
    assert seams == ({"feed_forward_function", "query_projection_function"} if family == "deformable"
                     else {"feed_forward_function"})
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    loss, grads = loss_and_grads(model, pixel_values, pixel_mask, labels)
    torch.testing.assert_close(loss, plain_loss)
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-5, msg=name)

    remove_memory_savers(model)
    assert not {"MaskDropout", "OutputSavingLayerNorm"} & {type(m).__name__ for m in model.modules()}
    assert not any(seam in vars(m) for m in model.modules() for seam in SEAMS)


def test_the_savers_cut_what_a_training_step_keeps_for_backward():
    pixel_values, pixel_mask = padded_batch()
    labels = random_labels(2, num_labels=3)
    kept = []
    for savers in (False, True):
        model = tiny_model("deformable")
        model.freeze_backbone()  # the transformer's activations, not the CNN's, are what the savers address
        if savers:
            apply_memory_savers(model)
        storages = {}

        def pack(tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(pixel_values, pixel_mask=pixel_mask, labels=labels).loss.backward()
        kept.append(sum(storages.values()))
    assert kept[1] < 0.9 * kept[0], kept


def test_memory_savers_option():
    assert memory_savers_wanted("auto", "cpu") and not memory_savers_wanted("auto", "cuda")
    assert memory_savers_wanted("on", "cuda") and not memory_savers_wanted("off", "cpu")
    with pytest.raises(ValueError, match="memory_savers must be"):
        memory_savers_wanted("yes", "cpu")
