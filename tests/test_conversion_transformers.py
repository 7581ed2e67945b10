"""Converted official checkpoints against transformers' own classes: the converted weights, loaded by
transformers' DetrForObjectDetection / DeformableDetrForObjectDetection under their own config (the layout of
their Hub checkpoints of the same models), give the same outputs as detrkit's converted model.

transformers' DETR is configured with auxiliary_loss=False, as its Hub checkpoints are: with it True,
transformers feeds each decoder layer the previous output passed once more through the decoder's final
LayerNorm, which departs from the official code (and from detrkit) once that norm's affine is trained (README,
"Known limits"). The converted config keeps auxiliary_loss=True; the last layer's outputs do not depend on it."""

import pytest
import torch
import transformers
from helpers import OFFICIAL_DEFORMABLE_VARIANTS as DEFORMABLE_VARIANTS
from helpers import official_detr_state_dict, save_deformable
from helpers import two_images as padded_batch

from detrkit.conversion.convert import convert_official_checkpoint

TINY_TRANSFORMER = dict(backbone="resnet18", use_timm_backbone=True, use_pretrained_backbone=False, d_model=32,
                        encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=8, num_labels=91,
                        auxiliary_loss=True)


def _load_theirs(model_class, folder, config):
    theirs, info = model_class.from_pretrained(folder, config=config, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return theirs.eval()


def _labels():
    return [{"class_labels": torch.tensor([1, 17, 90]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4],
                                                                             [0.2, 0.3, 0.1, 0.2],
                                                                             [0.7, 0.6, 0.2, 0.3]])},
            {"class_labels": torch.tensor([3]), "boxes": torch.tensor([[0.6, 0.4, 0.5, 0.3]])}]


@pytest.mark.parametrize("dilation", [False, True], ids=["r18", "r18-dc5"])
def test_detr_converted_weights_in_transformers_class(tmp_path, dilation):
    torch.save({"model": official_detr_state_dict(seed=1)}, tmp_path / "official.pth")
    ours = convert_official_checkpoint(str(tmp_path / "official.pth"), tmp_path / "out", dilation=dilation)
    # a DETR file without args has the official 8 heads (the layout does not record them)
    config = transformers.DetrConfig(**{**TINY_TRANSFORMER, "encoder_attention_heads": 8, "decoder_attention_heads": 8,
                                        "auxiliary_loss": False}, dilation=dilation)
    theirs = _load_theirs(transformers.DetrForObjectDetection, tmp_path / "out", config)
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        expected = theirs(pixel_values, pixel_mask=pixel_mask, labels=_labels())
        actual = ours(pixel_values, pixel_mask=pixel_mask, labels=_labels())
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=1e-4)
    assert ours.config.auxiliary_loss
    for name, value in expected.loss_dict.items():  # the unweighted terms of the last layer
        torch.testing.assert_close(actual.loss_dict[name], value, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("variant", ["multi-scale", "single-scale-dc5", "two-stage"])
def test_deformable_converted_weights_in_transformers_class(tmp_path, variant):
    spec = DEFORMABLE_VARIANTS[variant]
    path, _ = save_deformable(tmp_path, **spec)
    ours = convert_official_checkpoint(str(path), tmp_path / "out")
    config = transformers.DeformableDetrConfig(
        **TINY_TRANSFORMER, num_feature_levels=spec.get("levels", 4), encoder_n_points=2, decoder_n_points=2,
        with_box_refine=spec.get("with_box_refine", False), two_stage=spec.get("two_stage", False),
        two_stage_num_proposals=8, dilation=spec.get("dilation", False),
    )
    theirs = _load_theirs(transformers.DeformableDetrForObjectDetection, tmp_path / "out", config)
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        expected, actual = theirs(pixel_values, pixel_mask=pixel_mask), ours(pixel_values, pixel_mask=pixel_mask)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=1e-4)
