"""Any timm backbone (issue 11): one small model per family, pretrained=False, tiny transformer. Stages are picked
from timm's feature_info by stride, channels-last outputs (Swin) are handled, the early stages timm builds are
frozen by name, DC5 works where the family dilates and is refused where it cannot, and a non-ResNet model loads
from its saved folder with plain transformers."""
import pytest
import torch

from detrkit.modeling import (
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
)

from helpers import SMALL, padded_batch, run_without_detrkit

TINY_SWIN = {"embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}
# family -> (timm name, timm kwargs, the modules with parameters that the default freezing (stem + C2) must
# freeze, written from each architecture as timm builds it: top-level modules of its features_only model; the
# BatchNorms are frozen BatchNorms, which hold buffers only)
FAMILIES = {
    "resnet": ("resnet18", {}, {"conv1", "layer1"}),
    "resnext": ("resnext26ts", {}, {"stem_conv1", "stem_conv2", "stem_conv3", "stages_0"}),
    "regnet": ("regnetx_002", {}, {"stem", "s1"}),
    "efficientnet": ("efficientnet_b0", {}, {"conv_stem", "blocks.0", "blocks.1"}),
    "mobilenetv3": ("mobilenetv3_small_050", {}, {"conv_stem", "blocks.0"}),
    "convnext": ("convnext_atto", {}, {"stem_0", "stem_1", "stages_0"}),
    "swin": ("swin_tiny_patch4_window7_224", TINY_SWIN, {"patch_embed", "layers_0"}),
}
MODELS = {"detr": (DetrConfig, DetrForObjectDetection), "deformable": (DeformableDetrConfig,
                                                                       DeformableDetrForObjectDetection)}


def build(family, kind, **overrides):
    name, timm_kwargs, _ = FAMILIES[family]
    config_class, model_class = MODELS[kind]
    torch.manual_seed(0)
    config = config_class(**{**SMALL, "backbone": name, "backbone_kwargs": dict(timm_kwargs) or None,
                             "dropout": 0.0, **overrides})
    return model_class(config)


def frozen_owners(model):
    """The top-level timm modules (two levels for efficientnet's `blocks.N`) whose tensors are frozen."""
    owners = set()
    for name, parameter in model.model.backbone.conv_encoder.model.named_parameters():
        if not parameter.requires_grad:
            parts = name.split(".")
            owners.add(".".join(parts[:2]) if parts[0] == "blocks" else parts[0])
    return owners


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_freezing_and_save_load(family, kind, tmp_path):
    model = build(family, kind).eval()
    backbone = model.model.backbone.conv_encoder
    expected_strides = [4, 8, 16, 32] if kind == "detr" else [8, 16, 32]
    assert backbone.strides == expected_strides
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        out = model(pixel_values, pixel_mask)
    assert out.pred_boxes.shape == (2, SMALL["num_queries"], 4) and torch.isfinite(out.logits).all()

    # the default (3 trainable stages) freezes the stem and C2, exactly
    assert frozen_owners(model) == FAMILIES[family][2]
    trainable = sum(p.requires_grad for p in backbone.parameters())
    assert 0 < trainable < len(list(backbone.parameters()))
    model.model.backbone.conv_encoder.freeze_early_stages(0)
    assert not any(p.requires_grad for p in backbone.parameters())
    model.model.backbone.conv_encoder.freeze_early_stages(model.config.backbone_trainable_stages)

    if kind == "detr":
        return  # the backbone's save/load is the same code for both; once per family keeps CI short
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert sum(p.requires_grad for p in loaded.model.backbone.parameters()) == trainable
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values, pixel_mask).logits, out.logits)


def test_swin_takes_any_input_size_and_returns_channels_first():
    model = build("swin", "deformable").eval()
    with torch.no_grad():
        features = model.model.backbone(torch.randn(1, 3, 100, 150), torch.ones(1, 100, 150, dtype=torch.bool))
    assert [tuple(f.shape[1:2]) for f, _ in features] == [(64,), (128,), (256,)]
    assert all(f.shape[-2:] == m.shape[-2:] for f, m in features)


@pytest.mark.parametrize("family", ["resnet", "convnext", "efficientnet"])
def test_dc5_dilates_the_last_stage(family):
    model = build(family, "deformable", dilation=True)
    assert model.model.backbone.conv_encoder.strides == [8, 16, 16]


def test_dc5_refused_where_the_family_cannot_dilate():
    with pytest.raises(ValueError, match="cannot dilate"):
        build("swin", "detr", dilation=True)


def test_unknown_backbone_name_is_a_clear_error():
    with pytest.raises(ValueError, match="not a timm model"):
        DetrForObjectDetection(DetrConfig(**{**SMALL, "backbone": "no_such_net"}))


@pytest.mark.slow
def test_remote_code_load_of_a_convnext_model(tmp_path):
    model = build("convnext", "deformable", with_box_refine=True).eval()
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        expected = model(pixel_values, pixel_mask).logits
    model.save_pretrained(tmp_path / "model")
    torch.save({"pixel_values": pixel_values, "pixel_mask": pixel_mask, "logits": expected}, tmp_path / "io.pt")
    result = run_without_detrkit("""
        import sys, torch, transformers
        folder, io = sys.argv[1], torch.load(sys.argv[2])
        model = transformers.AutoModelForObjectDetection.from_pretrained(folder, trust_remote_code=True).eval()
        assert model.config.backbone == "convnext_atto", model.config.backbone
        with torch.no_grad():
            logits = model(io["pixel_values"], io["pixel_mask"]).logits
        torch.testing.assert_close(logits, io["logits"])
        print("ok")
    """, tmp_path / "model", tmp_path / "io.pt", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
