"""DetrForSegmentation / DeformableDetrForSegmentation: transformers parity, mask losses, the Deformable memory
level, freezing for the paper's second step, save/load and Auto registration."""

import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from helpers import SMALL, padded_batch, random_labels
from safetensors import safe_open

from detrkit.modeling import (
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DeformableDetrForSegmentation,
    DetrConfig,
    DetrForObjectDetection,
    DetrForSegmentation,
)
from detrkit.modeling.mask_loss import dice_loss, mask_focal_loss

# the mask head's GroupNorm wants d_model + heads divisible by 8 (transformers refuses otherwise)
SEGMENTATION = dict(SMALL, encoder_attention_heads=8, decoder_attention_heads=8)


def _labels_with_masks(counts, size=(80, 96), seed=0):
    labels = random_labels(len(counts), SMALL["num_labels"], seed=seed, counts=counts)
    generator = torch.Generator().manual_seed(seed)
    for target in labels:
        target["masks"] = (torch.rand(len(target["class_labels"]), *size, generator=generator) > 0.5).float()
    return labels


def _transformers_checkpoint(tmp_path, **kwargs):
    torch.manual_seed(0)
    config = transformers.DetrConfig(use_pretrained_backbone=False, **kwargs)
    reference = transformers.DetrForSegmentation(config).eval()
    reference.save_pretrained(tmp_path)
    return reference


@pytest.mark.parametrize("kwargs", [dict(SEGMENTATION, auxiliary_loss=True), dict(SEGMENTATION, dilation=True)],
                         ids=["aux", "dc5"])
def test_transformers_checkpoint_parity(tmp_path, kwargs):
    reference = _transformers_checkpoint(tmp_path, **kwargs)
    ours, info = DetrForSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ours.eval()
    pixel_values, pixel_mask = padded_batch()
    labels = _labels_with_masks([3, 1])
    with torch.no_grad():
        expected = reference(pixel_values, pixel_mask=pixel_mask, labels=[dict(t) for t in labels])
        actual = ours(pixel_values, pixel_mask=pixel_mask, labels=[dict(t) for t in labels])
    assert actual.pred_masks.shape == (2, SMALL["num_queries"], 80 // 4, 96 // 4)
    for name in ("logits", "pred_boxes", "pred_masks", "loss"):
        torch.testing.assert_close(getattr(actual, name), getattr(expected, name), atol=1e-4, rtol=1e-4, msg=name)
    assert set(actual.loss_dict) == set(expected.loss_dict)
    for name, value in expected.loss_dict.items():
        torch.testing.assert_close(actual.loss_dict[name], value, atol=1e-4, rtol=1e-4, msg=name)


def test_our_checkpoint_keeps_transformers_key_names(tmp_path):
    DetrForSegmentation(DetrConfig(**SEGMENTATION)).save_pretrained(tmp_path / "ours")
    _transformers_checkpoint(tmp_path / "theirs", **SEGMENTATION)
    keys = []
    for name in ("ours", "theirs"):
        with safe_open(tmp_path / name / "model.safetensors", "pt") as f:
            keys.append(set(f.keys()))
    assert keys[0] == keys[1]


def test_mask_losses_by_hand():
    """DICE and focal terms against direct formulas (the paper's: DICE with +1 smoothing, focal alpha .25 gamma 2)."""
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    p = logits.sigmoid()
    expected_dice = 1 - (2 * (p * targets).sum() + 1) / (p.sum() + targets.sum() + 1)
    torch.testing.assert_close(dice_loss(logits, targets, num_boxes=2.0), expected_dice / 2)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = 0.25 * targets + 0.75 * (1 - targets)
    focal = alpha_t * (1 - p_t) ** 2 * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(mask_focal_loss(logits, targets, num_boxes=2.0), focal.mean() / 2)


def _deformable(**overrides):
    torch.manual_seed(0)
    return DeformableDetrForSegmentation(DeformableDetrConfig(**dict(SEGMENTATION, **overrides)))


def test_deformable_reads_the_stride16_memory_level():
    model = _deformable().eval()
    pixel_values, pixel_mask = padded_batch()
    seen = {}
    model.bbox_attention.register_forward_hook(lambda m, args, out: seen.update(memory=args[1]))
    with torch.no_grad():
        output = model(pixel_values, pixel_mask)
        c3, c4 = [f for f, _ in model.detr.model.backbone(pixel_values, pixel_mask)][-3:-1]
    # levels: C3 (stride 8), C4 (stride 16), C5, extra; the memory concatenates them in that order
    start, (height, width) = c3.shape[-2] * c3.shape[-1], c4.shape[-2:]
    expected = output.encoder_last_hidden_state[:, start:start + height * width].transpose(1, 2)
    torch.testing.assert_close(seen["memory"], expected.reshape(2, -1, height, width))
    assert output.pred_masks.shape == (2, SMALL["num_queries"], 80 // 4, 96 // 4)


def test_deformable_single_scale_reads_c5():
    model = _deformable(num_feature_levels=1).eval()
    seen = {}
    model.bbox_attention.register_forward_hook(lambda m, args, out: seen.update(shape=args[1].shape))
    with torch.no_grad():
        output = model(torch.randn(1, 3, 64, 64))
    assert seen["shape"][-2:] == (2, 2) and output.pred_masks.shape[-2:] == (16, 16)


def test_deformable_loss_backward_and_save_load(tmp_path):
    # two-stage with box refinement: the variant with the most tied heads to save and load
    model = _deformable(auxiliary_loss=True, with_box_refine=True, two_stage=True,
                        two_stage_num_proposals=SMALL["num_queries"])
    pixel_values, pixel_mask = padded_batch()
    output = model(pixel_values, pixel_mask, labels=_labels_with_masks([3, 0]))  # an image without objects too
    assert {"loss_mask", "loss_dice", "loss_ce", "loss_ce_0"} <= set(output.loss_dict)
    (output.loss_dict["loss_mask"] + output.loss_dict["loss_dice"]).backward()  # the mask terms alone
    assert model.mask_head.lay1.weight.grad.abs().sum() > 0
    assert model.bbox_attention.k_linear.weight.grad.abs().sum() > 0
    # the mask loss reaches the backbone's trainable stages (timm zero-inits each block's last BatchNorm, so at
    # initialisation only the shortcut convolutions get a gradient)
    assert model.detr.model.backbone.conv_encoder.model.layer3[0].downsample[0].weight.grad.abs().sum() > 0

    model.eval().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageSegmentation"].endswith("DeformableDetrForSegmentation")
    assert config["auto_map"]["AutoModelForUniversalSegmentation"].endswith("DeformableDetrForSegmentation")
    loaded, info = DeformableDetrForSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        before, after = model(pixel_values, pixel_mask), loaded.eval()(pixel_values, pixel_mask)
    torch.testing.assert_close(after.pred_masks, before.pred_masks)
    torch.testing.assert_close(after.logits, before.logits)


@pytest.mark.parametrize("kind", ["detr", "deformable"])
def test_freeze_detector_trains_only_the_head(tmp_path, kind):
    """The paper's second step: the detector loads unchanged, keeps its weights and its outputs; the head learns."""
    torch.manual_seed(0)
    if kind == "detr":
        detector, segmentation_class = DetrForObjectDetection(DetrConfig(**SEGMENTATION)), DetrForSegmentation
    else:
        # trainable BatchNorm, as the demo checkpoint: a frozen detector must not update its running statistics
        detector = DeformableDetrForObjectDetection(DeformableDetrConfig(**SEGMENTATION,
                                                                          freeze_backbone_batch_norm=False))
        segmentation_class = DeformableDetrForSegmentation
    detector.save_pretrained(tmp_path / "detector")
    model = segmentation_class.from_detector(tmp_path / "detector", freeze_detector=True)
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(pixel_values, pixel_mask).logits,
                                   detector.eval()(pixel_values, pixel_mask).logits)
    detector_weights = {k: v.clone() for k, v in model.detr.state_dict().items()}
    head_weight = model.mask_head.lay1.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    output = model(pixel_values, pixel_mask, labels=_labels_with_masks([2, 1]))
    output.loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.detr.parameters())
    assert not torch.equal(model.mask_head.lay1.weight, head_weight)
    for name, value in model.detr.state_dict().items():
        assert torch.equal(value, detector_weights[name]), name

    model.save_pretrained(tmp_path / "frozen")  # the flag travels with the checkpoint
    reloaded = segmentation_class.from_pretrained(tmp_path / "frozen")
    assert reloaded.config.freeze_detector and not any(p.requires_grad for p in reloaded.detr.parameters())
    reloaded.set_detector_frozen(False)  # joint training again: the backbone's own stage freezing comes back
    assert any(p.requires_grad for p in reloaded.detr.parameters())
    assert not any(p.requires_grad for n, p in reloaded.detr.named_parameters() if ".layer1." in n)


def test_bad_labels_are_named():
    model = _deformable()
    pixel_values, pixel_mask = padded_batch()
    labels = _labels_with_masks([2, 1])
    del labels[1]["masks"]
    with pytest.raises(ValueError, match=r"labels\[1\] has no 'masks'"):
        model(pixel_values, pixel_mask, labels=labels)
    labels = _labels_with_masks([2, 1])
    labels[0]["masks"] = labels[0]["masks"][:1]
    with pytest.raises(ValueError, match=r"labels\[0\] has 1 masks but 2 class_labels"):
        model(pixel_values, pixel_mask, labels=labels)
    labels = _labels_with_masks([2, 1])
    labels[1]["masks"] = labels[1]["masks"][:, :40]
    with pytest.raises(ValueError, match="different sizes"):
        model(pixel_values, pixel_mask, labels=labels)


def test_head_size_error_names_the_fields():
    with pytest.raises(ValueError, match="d_model and the number of attention heads"):
        DetrForSegmentation(DetrConfig(**SMALL))  # 32 + 2 heads = 34 channels


@pytest.mark.parametrize("kind", ["detr", "deformable"])
def test_matched_masks_only_gives_the_same_losses_and_gradients(kind):
    """The training-speed option runs the head for the matched queries only: same losses, same head gradients."""
    torch.manual_seed(0)
    config_class, model_class = ((DetrConfig, DetrForSegmentation) if kind == "detr"
                                 else (DeformableDetrConfig, DeformableDetrForSegmentation))
    model = model_class(config_class(**SEGMENTATION, dropout=0.0, auxiliary_loss=True)).train()
    pixel_values, pixel_mask = padded_batch()
    labels = _labels_with_masks([3, 1])
    results = []
    for matched_only in (False, True):
        model.config.train_matched_masks_only = matched_only
        model.zero_grad()
        output = model(pixel_values, pixel_mask, labels=[dict(t) for t in labels])
        (output.loss_dict["loss_mask"] + output.loss_dict["loss_dice"]).backward()
        results.append((output, model.mask_head.lay2.weight.grad.clone()))
    (full, full_grad), (matched, matched_grad) = results
    assert full.pred_masks is not None and matched.pred_masks is None
    for name in ("loss_mask", "loss_dice", "loss_ce", "loss_bbox"):
        torch.testing.assert_close(matched.loss_dict[name], full.loss_dict[name], msg=name)
    torch.testing.assert_close(matched_grad, full_grad, atol=1e-6, rtol=1e-4)
