"""DETR model pieces: timm backbone (stages, DC5, frozen BN, trainable stages, masks), position encodings,
the SDPA/explicit attention paths, output options, presets, clear errors, and a training smoke test."""

import pytest
import torch
from helpers import SMALL, padded_batch, random_labels
from transformers.models.detr.modeling_detr import DetrSinePositionEmbedding

from detrkit.modeling import Backbone, DetrConfig, DetrForObjectDetection, DetrModel, config_from_preset
from detrkit.modeling.backbone import FrozenBatchNorm2d
from detrkit.modeling.position_encoding import PositionEmbeddingSine


def test_backbone_reads_channels_and_strides_from_timm_and_dilates_for_dc5():
    plain = Backbone("resnet18")
    assert (plain.channels, plain.strides) == ([64, 128, 256, 512], [4, 8, 16, 32])
    dc5 = Backbone("resnet18", out_indices=(2, 3, 4), dilation=True)
    assert (dc5.channels, dc5.strides) == ([128, 256, 512], [8, 16, 16])
    pixel_values, pixel_mask = padded_batch()
    features = dc5(pixel_values, pixel_mask.bool())
    assert [tuple(f.shape[-2:]) for f, _ in features] == [(10, 12), (5, 6), (5, 6)]
    for feature, mask in features:
        assert mask.shape == (2, *feature.shape[-2:]) and mask.dtype == torch.bool
    # image 0 is 64x96 inside an 80x96 canvas: its bottom rows are padding at every stride
    assert features[0][1][0, :8].all() and not features[0][1][0, 8:].any()


def test_frozen_batch_norm_and_paper_default_trainable_stages():
    backbone = Backbone("resnet18")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    trainable = {n.split(".")[1] for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}  # stem + layer1 frozen, as the paper
    assert not any(p.requires_grad for p in Backbone("resnet18", trainable_stages=0).parameters())
    stem_frozen = {n.split(".")[1] for n, p in Backbone("resnet18", trainable_stages=4).named_parameters()
                   if p.requires_grad}
    assert stem_frozen == {"layer1", "layer2", "layer3", "layer4"}
    trainable_bn = Backbone("resnet18", freeze_batch_norm_2d=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trainable_bn.modules())


def test_frozen_batch_norm_matches_eval_batch_norm_on_any_timm_cnn():
    """A non-ResNet with BatchNormAct2d (activation fused into the norm) keeps its activation when frozen."""
    torch.manual_seed(0)
    frozen = Backbone("mobilenetv3_small_050", out_indices=(2, 3, 4)).eval()
    reference = Backbone("mobilenetv3_small_050", out_indices=(2, 3, 4), freeze_batch_norm_2d=False).eval()
    state = frozen.state_dict()
    for name, value in reference.state_dict().items():
        if name in state:
            value.copy_(state[name])
    x, mask = torch.randn(1, 3, 64, 64), torch.ones(1, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        for (a, _), (b, _) in zip(frozen(x, mask), reference(x, mask)):
            torch.testing.assert_close(a, b)


def test_frozen_batch_norm_equals_eval_batch_norm_and_saves_no_activation():
    torch.manual_seed(0)
    reference = torch.nn.BatchNorm2d(16).eval()
    with torch.no_grad():
        for tensor in (reference.weight, reference.bias, reference.running_mean):
            tensor.normal_()
        reference.running_var.uniform_(0.5, 2.0)
    frozen = FrozenBatchNorm2d(16)
    frozen.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randn(2, 16, 9, 7, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        y = frozen(x * 1.0)
    torch.testing.assert_close(y, reference(x))
    assert all(shape.numel() == 16 for shape in saved)  # the per-channel scale, never the activations
    (grad,) = torch.autograd.grad(y.sum(), x)
    (expected,) = torch.autograd.grad(reference(x).sum(), x)
    torch.testing.assert_close(grad, expected)
    assert frozen(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_sine_position_encoding_matches_transformers_and_ignores_padding():
    mask = torch.zeros(2, 6, 9, dtype=torch.bool)
    mask[0, :6, :9] = True
    mask[1, :4, :5] = True
    ours = PositionEmbeddingSine(16, normalize=True)(mask)
    reference = DetrSinePositionEmbedding(16, normalize=True)(mask.shape[:1] + (32,) + mask.shape[1:], "cpu",
                                                               torch.float32, mask=mask)
    torch.testing.assert_close(ours, reference)
    unpadded = PositionEmbeddingSine(16, normalize=True)(torch.ones(1, 4, 5, dtype=torch.bool))
    torch.testing.assert_close(ours[1:, :, :4, :5], unpadded)


def _small_model(**overrides):
    torch.manual_seed(0)
    return DetrForObjectDetection(DetrConfig(**{**SMALL, **overrides})).eval()


def test_sdpa_and_explicit_attention_paths_agree_and_shapes():
    model = _small_model()
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        fast = model(pixel_values, pixel_mask)
        slow = model(pixel_values, pixel_mask, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(fast.logits, slow.logits, atol=1e-5, rtol=1e-5)
    hw = slow.encoder_last_hidden_state.shape[1]
    assert len(slow.encoder_attentions) == SMALL["encoder_layers"]
    assert slow.encoder_attentions[0].shape == (2, SMALL["encoder_attention_heads"], hw, hw)
    assert slow.cross_attentions[0].shape == (2, SMALL["decoder_attention_heads"], SMALL["num_queries"], hw)
    assert len(slow.decoder_hidden_states) == SMALL["decoder_layers"] + 1
    # padding keys get exactly zero attention
    key_valid = torch.nn.functional.interpolate(pixel_mask[None].float(), size=(3, 3)).bool()[0].flatten(1)
    assert (slow.cross_attentions[-1][0][..., ~key_valid[0]] == 0).all()
    assert fast.encoder_attentions is None and fast.logits.shape == (2, SMALL["num_queries"], SMALL["num_labels"] + 1)
    assert ((fast.pred_boxes >= 0) & (fast.pred_boxes <= 1)).all()


def test_pre_norm_and_learned_positions_and_tuple_output():
    model = _small_model(normalize_before=True, position_embedding_type="learned")
    assert model.model.encoder.layernorm is not None
    output = model(torch.randn(1, 3, 64, 64), return_dict=False)
    assert isinstance(output, tuple) and output[0].shape == (1, SMALL["num_queries"], SMALL["num_labels"] + 1)
    assert DetrModel(DetrConfig(**SMALL))(torch.randn(1, 3, 64, 64)).last_hidden_state.shape == (1, 8, 32)


def test_presets():
    config = config_from_preset("detr-resnet-101-dc5", use_pretrained_backbone=False)
    assert (config.backbone, config.dilation, config.num_labels, config.d_model) == ("resnet101", True, 91, 256)
    assert config_from_preset("detr-resnet-50", id2label={0: "cat", 1: "dog"}).num_labels == 2
    with pytest.raises(KeyError, match="detr-resnet-50"):
        config_from_preset("detr-resnet-51")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(position_embedding_type="rotary"), "position_embedding_type"),
        (dict(d_model=30, encoder_attention_heads=4), "divisible"),
        (dict(backbone_config={"model_type": "resnet"}), "timm"),
        (dict(use_timm_backbone=False), "use_timm_backbone"),
        (dict(backbone_trainable_stages=7), "backbone_trainable_stages"),
    ],
)
def test_bad_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DetrConfig(**kwargs)


def test_bad_model_build_is_named():
    with pytest.raises(ValueError, match="not-a-cnn"):
        DetrForObjectDetection(DetrConfig(**{**SMALL, "backbone": "not-a-cnn"}))
    with pytest.raises(ValueError, match="encoder_attention_type"):
        DetrForObjectDetection(DetrConfig(**{**SMALL, "encoder_attention_type": "magic"}))


def _labels():
    return random_labels(2, SMALL["num_labels"])


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda l: l[:1], r"labels has 1 entries but the batch has 2"),
        (lambda l: [l[0], {"boxes": l[1]["boxes"]}], r"labels\[1\] has no 'class_labels'"),
        (lambda l: [l[0], {**l[1], "boxes": l[1]["boxes"][:, :3]}], r"labels\[1\]\['boxes'\] must be a \(num_boxes, 4\)"),
        (lambda l: [{**l[0], "class_labels": l[0]["class_labels"][:2]}, l[1]], r"labels\[0\] has 2 class_labels but 3"),
        (lambda l: [l[0], {**l[1], "class_labels": torch.tensor([0, 9, 1])}], r"class id 9 outside \[0, 4\)"),
        (lambda l: [l[0], {**l[1], "class_labels": l[1]["class_labels"].float()}], r"integer"),
        (lambda l: [{**l[0], "boxes": l[0]["boxes"].index_fill(0, torch.tensor([2]), float("nan"))}, l[1]],
         r"labels\[0\]\['boxes'\] box 2 has a non-finite"),
        (lambda l: [{**l[0], "boxes": l[0]["boxes"] * torch.tensor([1, 1, -1, 1])}, l[1]], r"negative width"),
        (lambda l: {"class_labels": l[0]["class_labels"]}, r"list of dicts"),
    ],
)
def test_bad_labels_are_named(corrupt, message):
    model = _small_model()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(2, 3, 64, 64), labels=corrupt(_labels()))


def test_bad_pixel_inputs_are_named():
    model = _small_model()
    with pytest.raises(ValueError, match="pixel_values must be a"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="4 channels"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="pixel_mask has shape"):
        model(torch.randn(1, 3, 64, 64), pixel_mask=torch.ones(1, 32, 64))


def test_training_steps_lower_the_loss():
    """A few AdamW steps on a handful of synthetic images (bright squares on noise) lower the set loss.
    The backbone stays frozen to keep this fast on a 2-core CI; gradient flow into it is tested separately."""
    torch.manual_seed(0)
    config = DetrConfig(**{**SMALL, "auxiliary_loss": True, "num_labels": 2, "backbone_trainable_stages": 0})
    model = DetrForObjectDetection(config)
    model.train()
    images, labels = [], []
    for i in range(4):
        image = torch.randn(3, 64, 64) * 0.1
        x0, y0, size = 8 + 8 * i, 12 + 4 * i, 20
        image[i % 2, y0:y0 + size, x0:x0 + size] += 2.0
        images.append(image)
        box = torch.tensor([[(x0 + size / 2) / 64, (y0 + size / 2) / 64, size / 64, size / 64]])
        labels.append({"class_labels": torch.tensor([i % 2]), "boxes": box})
    pixel_values = torch.stack(images)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=1e-4)
    losses = []
    for _ in range(10):
        output = model(pixel_values, labels=labels)
        optimizer.zero_grad()
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(output.loss.item())
    assert {"loss_ce_0", "loss_bbox_0", "loss_giou_0"} <= set(output.loss_dict)
    assert len(output.auxiliary_outputs) == SMALL["decoder_layers"] - 1
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses


def test_gradients_reach_trainable_backbone_stages_only():
    model = DetrForObjectDetection(DetrConfig(**{**SMALL, "backbone_trainable_stages": 1})).train()
    model(torch.randn(2, 3, 64, 64), labels=random_labels(2, SMALL["num_labels"])).loss.backward()
    body = model.model.backbone.conv_encoder.model
    # (timm zero-inits each block's last BN, so the residual branches get zero gradient: check the shortcut conv)
    assert body.layer4[0].downsample[0].weight.grad.abs().sum() > 0
    assert body.layer3[0].conv1.weight.grad is None and body.conv1.weight.grad is None


def test_paper_init_reaches_attention_under_custom_code():
    """transformers skips modules without parameters of their own for custom-code models; DETR's xavier init of
    the attention projections must still run (std of xavier_uniform for 256x256 is 1/16, normal init's 0.02)."""
    model = DetrForObjectDetection(DetrConfig(**{**SMALL, "d_model": 256, "encoder_attention_heads": 8,
                                                 "decoder_attention_heads": 8}))
    weight = model.model.encoder.layers[0].self_attn.q_proj.weight
    assert abs(weight.std().item() - 1 / 16) < 0.005


def test_stage_freezing_survives_from_pretrained(tmp_path):
    DetrForObjectDetection(DetrConfig(**SMALL)).save_pretrained(tmp_path)
    for model in (DetrForObjectDetection.from_pretrained(tmp_path),
                  DetrForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)[0]):
        trainable = {n.split(".")[2] for n, p in model.model.backbone.named_parameters() if p.requires_grad}
        assert trainable == {"layer2", "layer3", "layer4"}
