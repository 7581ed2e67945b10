"""Deformable DETR learns: a few optimizer steps lower the set loss, and gradients reach the deformable
attention's sampling offsets and attention weights in the encoder and the decoder."""

import pytest
import torch
from helpers import DEFORMABLE_SMALL as SMALL
from helpers import DEFORMABLE_VARIANTS as VARIANTS
from helpers import deformable_batch as padded_batch

from detrkit.modeling import DeformableDetrConfig, DeformableDetrForObjectDetection


def make_model(variant, **overrides):
    torch.manual_seed(0)
    config = DeformableDetrConfig(**SMALL, **VARIANTS[variant], dropout=0.0, **overrides)
    return DeformableDetrForObjectDetection(config).train()


def test_a_few_optimizer_steps_lower_the_loss():
    model = make_model("box-refine", backbone_trainable_stages=0)  # a frozen backbone keeps CI fast
    pixel_values, pixel_mask, labels = padded_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(5):
        loss = model(pixel_values, pixel_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.95 * losses[0], losses


def test_gradients_reach_sampling_offsets_and_attention_weights():
    model = make_model("two-stage")
    pixel_values, pixel_mask, labels = padded_batch()
    model(pixel_values, pixel_mask, labels=labels).loss.backward()
    for part in ("encoder.layers.0.self_attn", "decoder.layers.0.encoder_attn", "decoder.layers.1.encoder_attn"):
        attention = model.model.get_submodule(part)
        for name in ("sampling_offsets", "attention_weights"):
            grad = getattr(attention, name).weight.grad
            assert grad is not None and grad.abs().sum() > 0, f"no gradient reaches {part}.{name}"
    # the two-stage proposal path trains too (encoder output projection)
    assert model.model.enc_output.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["plain", "box-refine", "two-stage"])
def test_head_initialisation_survives_weight_tying(variant):
    """Class prior 0.01 on every head (the decoder's copies are the tying sources); first-layer boxes start
    small except in two-stage, whose proposals carry a size."""
    model = make_model(variant)
    decoder = model.model.decoder
    for head in [*model.class_embed, *(decoder.class_embed or [])]:
        torch.testing.assert_close(head.bias.sigmoid(), torch.full((SMALL["num_labels"],), 0.01))
    expected = [0.0, 0.0, 0.0, 0.0] if variant == "two-stage" else [0.0, 0.0, -2.0, -2.0]
    assert model.bbox_embed[0].layers[-1].bias.tolist() == expected
    assert all(head.layers[-1].weight.abs().sum() == 0 for head in model.bbox_embed)


def test_radial_offset_initialisation():
    model = DeformableDetrForObjectDetection(DeformableDetrConfig(**SMALL))
    attention = model.model.encoder.layers[0].self_attn
    assert attention.attention_weights.weight.abs().sum() == 0 and attention.sampling_offsets.weight.abs().sum() == 0
    # head h, point k: offset (k + 1) * direction of angle 2 pi h / H, scaled onto the unit square's border
    offsets = attention.sampling_offsets.bias.view(attention.n_heads, attention.n_levels, attention.n_points, 2)
    torch.testing.assert_close(offsets[0, 0, :, 0], torch.arange(1.0, attention.n_points + 1))
    torch.testing.assert_close(offsets[0, :, 0], offsets[0, :1, 0].expand(attention.n_levels, 2))
    assert offsets.abs().amax(-1).equal(torch.arange(1.0, attention.n_points + 1).expand_as(offsets[..., 0]))
