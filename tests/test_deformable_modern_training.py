"""Deformable DETR's training-time additions (issue 20): DINO's contrastive denoising, H-DETR's one-to-many
queries, look-forward-twice and mixed query selection. Training only: at inference, and in what is saved, the
model is the paper's, so transformers' own class loads it with the same outputs."""
import pytest
import torch
import transformers

from detrkit.modeling import DeformableDetrConfig, DeformableDetrForObjectDetection

MODERN = dict(num_denoising=10, num_queries_one_to_many=20, look_forward_twice=True)
VARIANTS = {
    "single-scale": dict(num_feature_levels=1),
    "refine": dict(with_box_refine=True),
    "two-stage": dict(with_box_refine=True, two_stage=True),
}
LABELS = [
    {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.1, 0.1]])},
    {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.5, 0.3, 0.3]])},
]
NO_BOXES = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2


TINY = dict(backbone="resnet18", d_model=64, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64,
            decoder_ffn_dim=64, encoder_attention_heads=4, decoder_attention_heads=4, num_queries=10,
            two_stage_num_proposals=10, num_labels=3, auxiliary_loss=True, disable_custom_kernels=True)


def config(**overrides):
    return DeformableDetrConfig(**{**TINY, **overrides})


def pair(variant: dict, **modern):
    """The paper's model and one with the additions, built from the same seed: the additions draw from their own
    random stream, so every weight the paper's model has starts the same."""
    torch.manual_seed(0)
    paper = DeformableDetrForObjectDetection(config(**variant))
    torch.manual_seed(0)
    modern_model = DeformableDetrForObjectDetection(config(**variant, **(modern or MODERN)))
    theirs, ours = paper.state_dict(), modern_model.state_dict()
    assert all(torch.equal(value, ours[key]) for key, value in theirs.items())
    assert all(key.startswith("model.training_queries.") for key in set(ours) - set(theirs))
    return paper, modern_model


def images():
    return torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS)
def test_inference_is_the_papers_model(variant):
    paper, modern = pair(variant)
    with torch.no_grad():
        expected = paper.eval()(images())
        got = modern.eval()(images())
        got_with_labels = modern(images(), labels=LABELS)  # eval: labels give a loss, never extra queries
    for outputs in (got, got_with_labels):
        torch.testing.assert_close(outputs.logits, expected.logits, rtol=0, atol=0)
        torch.testing.assert_close(outputs.pred_boxes, expected.pred_boxes, rtol=0, atol=0)
    assert got_with_labels.training_queries is None


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS)
def test_training_adds_denoising_and_one_to_many_terms(variant):
    _, modern = pair(variant)
    outputs = modern.train()(images(), labels=LABELS)
    assert outputs.logits.shape[1] == 10  # the matching queries only
    terms = set(outputs.loss_dict)
    assert {"loss_ce_dn", "loss_bbox_dn", "loss_giou_dn", "loss_ce_dn_0"} <= terms
    assert {"loss_ce_one2many", "loss_bbox_one2many", "loss_ce_0_one2many"} <= terms
    outputs.loss.backward()
    assert all(p.grad is not None for p in modern.parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS)
def test_batch_without_boxes_gives_every_parameter_a_gradient(variant):
    """DistributedDataParallel waits for every parameter's gradient on every rank."""
    _, modern = pair(variant)
    outputs = modern.train()(images(), labels=NO_BOXES)
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert [n for n, p in modern.named_parameters() if p.requires_grad and p.grad is None] == []


def decoded_parts(model, labels, perturb=None):
    """The decoder's outputs by part in training (dropout off), optionally perturbing the label embedding of
    class `perturb`: only denoising queries of that class read it."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if perturb is not None:
        with torch.no_grad():
            model.model.training_queries.label_embedding.weight[perturb] += 5.0
    torch.manual_seed(1)  # the same noise draws
    outputs = model.model(images(), labels=labels)
    return outputs.intermediate_hidden_states, outputs.training_queries


def test_matching_queries_never_see_the_ground_truth():
    """A changed denoising query changes its own group only: the matching and the one-to-many queries, and the
    other groups, read nothing of it (DN-DETR's attention mask, H-DETR's)."""
    _, model = pair(VARIANTS["refine"], num_denoising=2, num_queries_one_to_many=5, label_noise_ratio=0.0)
    labels = [LABELS[0], {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.6, 0.5, 0.3, 0.3]])}]
    before_matching, before = decoded_parts(model, labels)
    after_matching, after = decoded_parts(model, labels, perturb=2)  # class 2: image 0's second box only
    torch.testing.assert_close(after_matching, before_matching, rtol=0, atol=0)
    hidden = "intermediate_hidden_states"
    torch.testing.assert_close(after["one_to_many"][hidden], before["one_to_many"][hidden], rtol=0, atol=0)
    layout = before["denoising"]["layout"]
    assert layout == {"groups": 1, "group_size": 4, "contrastive": True}  # 2 // 2 boxes: one group of 2 x 2
    changed = (after["denoising"][hidden] - before["denoising"][hidden]).abs().amax(dim=(1, 3))  # (B, P)
    assert changed[0].gt(0).all() and changed[1].eq(0).all()  # image 1 has no class-2 box: its queries unchanged


def test_two_stage_one_to_many_keeps_the_same_matching_queries():
    """H-DETR draws its extra queries from the next-best proposals: the matching queries are the same top-k."""
    paper, modern = pair(VARIANTS["two-stage"], num_queries_one_to_many=20)
    for model in (paper, modern):
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    with torch.no_grad():
        expected = paper.train().model(images())
        got = modern.train().model(images(), labels=LABELS)
    # (to rounding: the sigmoid of a longer tensor may vectorise differently)
    torch.testing.assert_close(got.init_reference_points, expected.init_reference_points)


def test_look_forward_twice_trains_the_previous_box_head():
    """Same outputs; a later layer's box loss reaches the earlier layer's box head only with it (DINO)."""
    gradients = {}
    for flag in (False, True):
        torch.manual_seed(0)
        model = DeformableDetrForObjectDetection(config(with_box_refine=True, look_forward_twice=flag)).train()
        outputs = model(images(), labels=LABELS)
        outputs.loss_dict["loss_bbox"].backward()  # the last layer's box term
        gradients[flag] = model.bbox_embed[0].layers[-1].weight.grad
    assert gradients[False] is None or gradients[False].abs().sum() == 0
    assert gradients[True].abs().sum() > 0


def test_mixed_query_selection_takes_content_from_learned_queries():
    torch.manual_seed(0)
    model = DeformableDetrForObjectDetection(config(with_box_refine=True, two_stage=True, mixed_query_selection=True))
    assert model.model.query_content_embeddings.weight.shape == (10, 64)
    with torch.no_grad():
        before = model.eval()(images()).logits
        model.model.query_content_embeddings.weight.add_(1.0)
        after = model(images()).logits
    assert not torch.allclose(before, after)
    with pytest.raises(ValueError, match="two_stage"):
        config(mixed_query_selection=True)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS)
def test_saved_model_loads_in_transformers_with_the_same_outputs(variant, tmp_path):
    _, model = pair(variant)
    model.train()(images(), labels=LABELS).loss.backward()  # trained with everything on
    model.save_pretrained(tmp_path)
    their_config = transformers.DeformableDetrConfig(**TINY, **variant, use_timm_backbone=True,
                                                     use_pretrained_backbone=False)
    theirs, info = transformers.DeformableDetrForObjectDetection.from_pretrained(
        tmp_path, config=their_config, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ours, info = DeformableDetrForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert ours.config.num_denoising == 10  # the recipe stays in the config for a further fine-tune
    with torch.no_grad():
        expected = model.eval()(images())
        for loaded in (theirs.eval(), ours.eval()):
            got = loaded(images())
            torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, rtol=1e-4, atol=1e-4)
