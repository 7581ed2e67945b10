"""How the two detectors share code (issue 11): the base model alone runs every Deformable DETR variant, shared
freezing / masks / configs, transformers' gradient checkpointing, LayerDrop, and imports that follow the data."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detrkit.modeling import (
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DeformableDetrModel,
    DetrConfig,
    DetrForObjectDetection,
    DetrModel,
)

from helpers import SMALL, padded_batch, random_labels

MODELING = Path(__file__).resolve().parents[1] / "modeling" / "detrkit" / "modeling"


def deformable(**overrides):
    torch.manual_seed(0)
    return DeformableDetrConfig(**{**SMALL, "dropout": 0.0, **overrides})


def detr(**overrides):
    torch.manual_seed(0)
    return DetrConfig(**{**SMALL, "dropout": 0.0, **overrides})


@pytest.mark.slow
def test_base_model_alone_runs_two_stage_and_box_refinement():
    pixel_values, pixel_mask = padded_batch()
    two_stage = DeformableDetrModel(deformable(with_box_refine=True, two_stage=True, two_stage_num_proposals=8))
    out = two_stage.eval()(pixel_values, pixel_mask)
    assert out.enc_outputs_class.shape[:2] == out.encoder_last_hidden_state.shape[:2]
    assert out.init_reference_points.shape == (2, 8, 4)

    refine = DeformableDetrModel(deformable(with_box_refine=True)).eval()
    with torch.no_grad():  # non-zero box heads, so each layer moves the boxes
        for head in refine.decoder.bbox_embed:
            head.layers[-1].weight.normal_(0, 0.1)
    out = refine(pixel_values, pixel_mask)
    references = out.intermediate_reference_points  # (B, layers, Q, 4): refined boxes, layer by layer
    assert references.shape[-1] == 4
    assert not torch.allclose(references[:, 0], references[:, 1])

    plain = DeformableDetrModel(deformable())
    assert plain.decoder.bbox_embed is None and plain.decoder.class_embed is None


def test_detection_model_uses_the_base_models_heads():
    model = DeformableDetrForObjectDetection(deformable(with_box_refine=True, two_stage=True))
    decoder = model.model.decoder
    for ours, theirs in [(model.bbox_embed, decoder.bbox_embed), (model.class_embed, decoder.class_embed)]:
        assert len(ours) == len(theirs) == SMALL["decoder_layers"] + 1
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert a is b


def test_base_model_save_and_load_two_stage(tmp_path):
    pixel_values, pixel_mask = padded_batch()
    model = DeformableDetrModel(deformable(with_box_refine=True, two_stage=True, two_stage_num_proposals=8)).eval()
    model.save_pretrained(tmp_path)
    loaded = DeformableDetrModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected, got = model(pixel_values, pixel_mask), loaded(pixel_values, pixel_mask)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state)
    torch.testing.assert_close(got.enc_outputs_class, expected.enc_outputs_class)


@pytest.mark.parametrize("model_class,make_config", [(DetrForObjectDetection, detr),
                                                     (DeformableDetrForObjectDetection, deformable)])
def test_freeze_backbone_and_mask_dtypes_shared(model_class, make_config):
    model = model_class(make_config()).eval()
    model.freeze_backbone()
    assert not any(p.requires_grad for p in model.model.backbone.parameters())
    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.model.backbone.parameters())
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        as_long = model(pixel_values, pixel_mask.long()).logits
        as_bool = model(pixel_values, pixel_mask.bool()).logits
        full = model(pixel_values[:1, :, :64, :96]).logits  # no mask: every pixel real
        full_mask = model(pixel_values[:1, :, :64, :96], torch.ones(1, 64, 96, dtype=torch.long)).logits
    torch.testing.assert_close(as_long, as_bool)
    torch.testing.assert_close(full, full_mask)
    with pytest.raises(ValueError, match="pixel_mask has shape"):
        model(pixel_values, pixel_mask[:, :10])


@pytest.mark.parametrize("model_class,make_config", [(DetrForObjectDetection, detr),
                                                     (DeformableDetrForObjectDetection, deformable)])
def test_gradient_checkpointing_gives_the_same_gradients(model_class, make_config):
    pixel_values, pixel_mask = padded_batch()
    labels = random_labels(2, num_labels=SMALL["num_labels"])
    model = model_class(make_config(auxiliary_loss=True)).train()
    assert model.supports_gradient_checkpointing
    grads, layer_calls = [], []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", None) is not None
                  and hasattr(m, "fc1")]
        assert len(layers) == SMALL["encoder_layers"] + SMALL["decoder_layers"]
        assert all(layer.gradient_checkpointing == checkpointing for layer in layers)
        calls = []
        hooks = [layer.fc1.register_forward_hook(lambda *args: calls.append(1)) for layer in layers]
        model.zero_grad()
        model(pixel_values, pixel_mask, labels=labels).loss.backward()
        for hook in hooks:
            hook.remove()
        layer_calls.append(len(calls))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert layer_calls[1] == 2 * layer_calls[0]  # each checkpointed layer ran again in backward
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


@pytest.mark.parametrize("model_class,make_config", [(DetrForObjectDetection, detr),
                                                     (DeformableDetrForObjectDetection, deformable)])
def test_layerdrop_skips_layers_in_training_only(model_class, make_config):
    pixel_values, pixel_mask = padded_batch()
    model = model_class(make_config(encoder_layers=4, decoder_layers=4, encoder_layerdrop=0.5,
                                    decoder_layerdrop=0.5, auxiliary_loss=True))
    calls = []
    for layer in [m for m in model.modules() if hasattr(m, "fc1")]:
        layer.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model.eval()(pixel_values, pixel_mask)
        assert len(calls) == 8
        calls.clear()
        torch.manual_seed(1)
        for _ in range(5):
            model.train()(pixel_values, pixel_mask)
    assert 0 < len(calls) < 40  # about half of the 5 x 8 layer calls


def test_each_config_declares_its_own_fields():
    detr_fields, deformable_fields = DetrConfig().to_dict(), DeformableDetrConfig().to_dict()
    assert {"normalize_before", "encoder_attention_type"} <= detr_fields.keys()
    assert not {"normalize_before", "encoder_attention_type"} & deformable_fields.keys()
    assert not {"two_stage", "num_feature_levels", "focal_alpha"} & detr_fields.keys()
    assert "recompute_activations" not in detr_fields  # a training option now (detrkit.training.memory_savers)
    assert "recompute_activations" not in DeformableDetrConfig(recompute_activations=True).to_dict()


@pytest.mark.parametrize("field,value,message", [
    ("normalize_before", True, "pre-norm"),
    ("encoder_attention_type", "act", "does not apply"),
    ("return_intermediate", False, "return_intermediate=False"),
    ("decoder_layerdrop", 1.0, "probability"),
])
def test_deformable_config_rejects_settings_it_cannot_honour(field, value, message):
    with pytest.raises(ValueError, match=message):
        DeformableDetrConfig(**{field: value})


def test_kernels_import_nothing_from_modeling():
    code = ("import sys, detrkit.kernels; "
            "print(sorted(m for m in sys.modules if m.startswith('detrkit.modeling')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1] / "tests")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_private_names_imported_across_modeling_files():
    for path in MODELING.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from .{node.module}"


def test_detection_models_do_not_import_each_other():
    for name, other in [("modeling_deformable_detr.py", "modeling_detr"), ("modeling_detr.py",
                                                                          "modeling_deformable_detr")]:
        modules = {node.module for node in ast.walk(ast.parse((MODELING / name).read_text()))
                   if isinstance(node, ast.ImportFrom)}
        assert other not in modules, name


def test_detr_base_model_alone():
    pixel_values, pixel_mask = padded_batch()
    out = DetrModel(detr()).eval()(pixel_values, pixel_mask, return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (2, SMALL["num_queries"], SMALL["d_model"])


def test_deformable_config_warns_about_a_field_it_does_not_use():
    from transformers.testing_utils import CaptureLogger

    from detrkit.modeling import configuration_deformable_detr

    with CaptureLogger(configuration_deformable_detr.logger) as captured:
        DeformableDetrConfig(eos_coefficient=0.2)
    assert "eos_coefficient=0.2 has no effect" in captured.out
    with CaptureLogger(configuration_deformable_detr.logger) as captured:
        DeformableDetrConfig()
    assert captured.out == ""
