"""Deformable DETR: checkpoints written by transformers' DeformableDetrForObjectDetection load into detrkit with
identical outputs and losses, for every variant of the paper, on a padded batch of differently sized images."""

import pytest
import torch
import transformers
from helpers import DEFORMABLE_SMALL as SMALL
from helpers import DEFORMABLE_VARIANTS as VARIANTS
from helpers import deformable_batch as padded_batch

from detrkit.modeling import DeformableDetrConfig, DeformableDetrForObjectDetection

def transformers_checkpoint(folder, **overrides):
    """A randomly initialised transformers model, perturbed so that zero/constant-initialised parameters
    (attention weights, heads) carry information, saved to `folder`."""
    torch.manual_seed(0)
    model = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(**{**SMALL, **overrides}))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "backbone" not in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    return model.eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_checkpoint_gives_identical_outputs_and_loss(tmp_path, variant):
    theirs = transformers_checkpoint(tmp_path, **VARIANTS[variant])
    ours = DeformableDetrForObjectDetection.from_pretrained(tmp_path).eval()
    assert isinstance(ours.config, DeformableDetrConfig)
    pixel_values, pixel_mask, labels = padded_batch()

    with torch.no_grad():
        expected = theirs(pixel_values, pixel_mask=pixel_mask, labels=labels)
        actual = ours(pixel_values, pixel_mask=pixel_mask, labels=labels)

    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.intermediate_reference_points, expected.intermediate_reference_points,
                               atol=1e-4, rtol=1e-4)
    # transformers has no two-stage encoder loss (the paper's): compare the shared terms, then the total
    # minus our weighted encoder terms
    shared = {k: v for k, v in actual.loss_dict.items() if not k.endswith("_enc")}
    assert shared.keys() == expected.loss_dict.keys()
    for key, value in expected.loss_dict.items():
        torch.testing.assert_close(shared[key], value, atol=1e-4, rtol=1e-4, msg=key)
    encoder_terms = sum(ours.config.bbox_loss_coefficient * v if k == "loss_bbox_enc"
                        else ours.config.giou_loss_coefficient * v if k == "loss_giou_enc"
                        else v if k == "loss_ce_enc" else 0.0
                        for k, v in actual.loss_dict.items())
    torch.testing.assert_close(actual.loss - encoder_terms, expected.loss, atol=1e-4, rtol=1e-4)
    if ours.config.two_stage:
        assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"} <= actual.loss_dict.keys()
        torch.testing.assert_close(actual.enc_outputs_class, expected.enc_outputs_class, atol=1e-4, rtol=1e-4)


def test_no_missing_or_unexpected_weights(tmp_path):
    transformers_checkpoint(tmp_path, **VARIANTS["two-stage"])
    _, info = DeformableDetrForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_our_checkpoint_round_trips_into_transformers(tmp_path):
    """The files we write use transformers' names: their class reads them back with the same outputs."""
    config = DeformableDetrConfig(**SMALL, with_box_refine=True)
    ours = DeformableDetrForObjectDetection(config).eval()
    ours.save_pretrained(tmp_path)
    theirs = transformers.DeformableDetrForObjectDetection.from_pretrained(
        tmp_path, config=transformers.DeformableDetrConfig(**SMALL, with_box_refine=True)
    ).eval()
    pixel_values, pixel_mask, _ = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(pixel_values, pixel_mask).logits, theirs(pixel_values, pixel_mask).logits,
                                   atol=1e-4, rtol=1e-4)


def test_default_size_two_stage_model(tmp_path):
    """R50, d_model 256, 6+6 layers, 300 queries from proposals: once at the paper's size."""
    torch.manual_seed(0)
    theirs = transformers.DeformableDetrForObjectDetection(
        transformers.DeformableDetrConfig(with_box_refine=True, two_stage=True)
    ).eval()
    theirs.save_pretrained(tmp_path)
    ours = DeformableDetrForObjectDetection.from_pretrained(tmp_path).eval()
    pixel_values = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        expected, actual = theirs(pixel_values), ours(pixel_values)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="two_stage_num_proposals"):
        ours(torch.randn(1, 3, 64, 64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("use_kernel", [True, False])
def test_cuda_outputs_loss_and_gradients_match_transformers(tmp_path, use_kernel):
    """On the GPU our CUDA kernel (or the reference) matches transformers' PyTorch path: outputs, loss, and the
    gradients reaching the deformable attention."""
    theirs = transformers_checkpoint(tmp_path, **VARIANTS["box-refine"], disable_custom_kernels=True).cuda()
    ours = DeformableDetrForObjectDetection.from_pretrained(tmp_path, disable_custom_kernels=not use_kernel)
    ours = ours.cuda().eval()
    pixel_values, pixel_mask, labels = padded_batch()
    pixel_values, pixel_mask = pixel_values.cuda(), pixel_mask.cuda()
    labels = [{k: v.cuda() for k, v in target.items()} for target in labels]
    expected = theirs(pixel_values, pixel_mask=pixel_mask, labels=labels)
    actual = ours(pixel_values, pixel_mask=pixel_mask, labels=labels)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-4, rtol=1e-4)
    expected.loss.backward()
    actual.loss.backward()
    for layer in ("encoder.layers.0.self_attn", "decoder.layers.1.encoder_attn"):
        for name in ("sampling_offsets", "attention_weights", "value_proj"):
            ours_grad = ours.model.get_submodule(f"{layer}.{name}").weight.grad
            theirs_grad = theirs.model.get_submodule(f"{layer}.{name}").weight.grad
            torch.testing.assert_close(ours_grad, theirs_grad, atol=1e-4, rtol=1e-3, msg=f"{layer}.{name}")


def test_one_layer_decoder_saves_and_loads(tmp_path):
    """With a single decoder layer there are no per-layer heads to tie."""
    config = DeformableDetrConfig(**{**SMALL, "decoder_layers": 1}, with_box_refine=True)
    model = DeformableDetrForObjectDetection(config).eval()
    model.save_pretrained(tmp_path)
    loaded = DeformableDetrForObjectDetection.from_pretrained(tmp_path).eval()
    pixel_values, pixel_mask, _ = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values, pixel_mask).pred_boxes, model(pixel_values, pixel_mask).pred_boxes)


def test_hidden_states_and_attentions_on_request():
    config = DeformableDetrConfig(**SMALL)
    model = DeformableDetrForObjectDetection(config).eval()
    pixel_values, pixel_mask, _ = padded_batch()
    with torch.no_grad():
        outputs = model(pixel_values, pixel_mask, output_attentions=True, output_hidden_states=True)
        as_tuple = model(pixel_values, pixel_mask, return_dict=False)
    sequence_length = outputs.encoder_last_hidden_state.shape[1]
    assert len(outputs.encoder_hidden_states) == config.encoder_layers + 1
    assert len(outputs.decoder_hidden_states) == config.decoder_layers + 1
    heads, levels, points = config.encoder_attention_heads, config.num_feature_levels, config.encoder_n_points
    assert outputs.encoder_attentions[0].shape == (2, sequence_length, heads, levels, points)
    assert outputs.decoder_attentions[0].shape == (2, heads, config.num_queries, config.num_queries)
    assert outputs.cross_attentions[0].shape == (2, config.num_queries, heads, levels, config.decoder_n_points)
    torch.testing.assert_close(as_tuple[0], outputs.logits)


def test_box_refinement_trains_separate_class_heads_and_keeps_them(tmp_path):
    """Per-layer class heads (the paper), distinct after training, written and read back distinct."""
    model = DeformableDetrForObjectDetection(DeformableDetrConfig(**SMALL, with_box_refine=True))
    assert model.class_embed[1].weight is not model.class_embed[0].weight
    with torch.no_grad():
        model.class_embed[1].bias.add_(1.0)  # as training would make them differ
    model.save_pretrained(tmp_path)
    loaded = DeformableDetrForObjectDetection.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.class_embed[1].bias, model.class_embed[1].bias)
    torch.testing.assert_close(loaded.class_embed[0].bias, model.class_embed[0].bias)
    assert all(head.weight is not loaded.class_embed[0].weight for head in loaded.class_embed[1:])
