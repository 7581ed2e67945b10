"""Checkpoints written by transformers' DetrForObjectDetection load into detrkit's with identical outputs."""

import pytest
import torch
import transformers
from helpers import SMALL, padded_batch, random_labels
from safetensors import safe_open

from detrkit.modeling import DetrConfig, DetrForObjectDetection, DetrModel


def _transformers_checkpoint(tmp_path, **kwargs):
    torch.manual_seed(0)
    config = transformers.DetrConfig(use_pretrained_backbone=False, **kwargs)
    reference = transformers.DetrForObjectDetection(config).eval()
    reference.save_pretrained(tmp_path)
    return reference


def _load_ours(path):
    model, info = DetrForObjectDetection.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(SMALL, auxiliary_loss=True),
        dict(SMALL, dilation=True, position_embedding_type="learned"),
    ],
    ids=["small-aux", "small-dc5-learned"],
)
def test_small_parity_padded_batch_and_loss(tmp_path, kwargs):
    reference = _transformers_checkpoint(tmp_path, **kwargs)
    ours = _load_ours(tmp_path)
    assert ours.config.dilation == kwargs.get("dilation", False)
    assert ours.config.model_type == "detrkit_detr"
    pixel_values, pixel_mask = padded_batch()
    labels = random_labels(2, SMALL["num_labels"], counts=[3, 0])  # an image without objects too
    with torch.no_grad():
        expected = reference(pixel_values, pixel_mask=pixel_mask, labels=[dict(t) for t in labels])
        actual = ours(pixel_values, pixel_mask=pixel_mask, labels=[dict(t) for t in labels])
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-4, rtol=1e-4)
    for name, value in expected.loss_dict.items():
        torch.testing.assert_close(actual.loss_dict[name], value, atol=1e-4, rtol=1e-4, msg=name)


def test_default_r50_parity(tmp_path):
    """The full-size default (R50, 6+6 layers, 100 queries) once, unpadded."""
    reference = _transformers_checkpoint(tmp_path)
    ours = _load_ours(tmp_path)
    pixel_values = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        expected, actual = reference(pixel_values), ours(pixel_values)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=1e-4)


def test_hub_legacy_config_reads_as_is(tmp_path):
    """The v4-era config.json of facebook/detr-resnet-50 (timm backbone named at top level)."""
    legacy = dict(SMALL, backbone="resnet50", use_timm_backbone=True, backbone_config=None, dilation=False,
                  use_pretrained_backbone=True, backbone_kwargs={"out_indices": [1, 2, 3, 4], "in_chans": 3},
                  model_type="detr", num_channels=3)
    config = DetrConfig(**legacy)
    assert (config.backbone, config.backbone_out_indices, config.dilation) == ("resnet50", [1, 2, 3, 4], False)


def test_our_checkpoint_keeps_transformers_key_names(tmp_path, small_kwargs):
    """Our own save writes the same on-disk names as transformers, so both directions load."""
    ours = DetrForObjectDetection(DetrConfig(**small_kwargs))
    ours.save_pretrained(tmp_path / "ours")
    reference = transformers.DetrForObjectDetection(transformers.DetrConfig(use_pretrained_backbone=False, **SMALL))
    reference.save_pretrained(tmp_path / "theirs")
    with safe_open(tmp_path / "ours" / "model.safetensors", "pt") as f:
        our_keys = set(f.keys())
    with safe_open(tmp_path / "theirs" / "model.safetensors", "pt") as f:
        their_keys = set(f.keys())
    assert our_keys == their_keys
    reloaded = _load_ours(tmp_path / "ours")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, ours.eval()(x).logits)


def test_base_model_loads_from_detection_checkpoint(tmp_path):
    reference = _transformers_checkpoint(tmp_path, **SMALL)
    base = DetrModel.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(base(x).last_hidden_state, reference.model(x).last_hidden_state, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_parity_padded_batch_and_loss(tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    reference = _transformers_checkpoint(tmp_path, **dict(SMALL, auxiliary_loss=True)).cuda()
    ours = _load_ours(tmp_path).cuda()
    pixel_values, pixel_mask = (t.cuda() for t in padded_batch())
    labels = [{k: v.cuda() for k, v in t.items()} for t in random_labels(2, SMALL["num_labels"], counts=[2, 1])]
    with torch.no_grad():
        expected = reference(pixel_values, pixel_mask=pixel_mask, labels=labels)
        actual = ours(pixel_values, pixel_mask=pixel_mask, labels=labels)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-4, rtol=1e-4)
