"""DETR's training-time additions (issue 20): DN-DETR's denoising (noised copies of the ground truth join the object
queries and must reconstruct it) and H-DETR's one-to-many queries (matched to the targets repeated k times).
Training only: at inference, and in what is saved, the model is the paper's DETR, so transformers' own class loads
it with the same outputs."""
import pytest
import torch
import transformers
from safetensors import safe_open

from detrkit.modeling import DetrConfig, DetrForObjectDetection
from detrkit.modeling.loss import SetCriterion
from detrkit.modeling.modeling_detr_segmentation import DetrForSegmentation

DN_DETR = dict(denoising_groups=5, contrastive_denoising=False, label_noise_ratio=0.2, box_noise_scale=0.4)
ONE_TO_MANY = dict(num_queries_one_to_many=12, k_one_to_many=3)
ADDITIONS = {"denoising": DN_DETR, "one-to-many": ONE_TO_MANY, "both": {**DN_DETR, **ONE_TO_MANY}}
LABELS = [
    {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.1, 0.1]])},
    {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.5, 0.3, 0.3]])},
]
NO_BOXES = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
GROUP_SIZE = 2  # the most boxes of one image in LABELS: DN-DETR's groups hold no negatives


def config(**overrides):
    # dropout off: two forward passes in training mode then differ only by what a test changes
    fields = dict(backbone="resnet18", d_model=64, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64,
                  decoder_ffn_dim=64, encoder_attention_heads=4, decoder_attention_heads=4, num_queries=10,
                  num_labels=3, auxiliary_loss=True, dropout=0.0)
    return DetrConfig(**{**fields, **overrides})


def pair(model_class=DetrForObjectDetection, additions=DN_DETR, **shared):
    """The paper's model and one with training-only additions, built from the same seed and sharing every weight
    the paper's has."""
    torch.manual_seed(0)
    paper = model_class(config(**shared))
    torch.manual_seed(0)
    denoised = model_class(config(**shared, **additions))
    missing, unexpected = denoised.load_state_dict(paper.state_dict(), strict=False)
    assert not unexpected and missing and all(".training_queries." in f".{key}" for key in missing)
    return paper, denoised


def images():
    return torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))


def test_denoising_off_changes_nothing():
    paper, denoised = pair()
    assert not DetrConfig().uses_denoising and paper.model.training_queries is None
    assert not paper._keys_to_ignore_on_save
    extra = {key for key in denoised.state_dict() if key.startswith("model.training_queries.")}
    assert extra and set(denoised.state_dict()) - extra == set(paper.state_dict())
    assert set(denoised._keys_to_ignore_on_save) == extra  # exact keys: save_pretrained drops them


@pytest.mark.parametrize("additions", ADDITIONS.values(), ids=ADDITIONS)
def test_inference_is_the_papers_model(additions):
    paper, denoised = pair(additions=additions)
    with torch.no_grad():
        expected = paper.eval()(images())
        got = denoised.eval()(images())
        got_with_labels = denoised(images(), labels=LABELS)  # eval: labels give a loss, never denoising queries
        expected_train = paper.train()(images())
        got_train = denoised.train()(images())  # training without labels: nothing to denoise
    for outputs, reference in ((got, expected), (got_with_labels, expected), (got_train, expected_train)):
        torch.testing.assert_close(outputs.logits, reference.logits, rtol=0, atol=0)
        torch.testing.assert_close(outputs.pred_boxes, reference.pred_boxes, rtol=0, atol=0)
        assert outputs.training_queries is None
    assert not any("_dn" in name or "one2many" in name for name in got_with_labels.loss_dict)


def test_training_adds_denoising_queries_and_their_losses():
    _, model = pair()
    torch.manual_seed(1)
    outputs = model.train()(images(), labels=LABELS)
    assert outputs.logits.shape == (2, 10, 4) and outputs.pred_boxes.shape == (2, 10, 4)  # the object queries only
    assert [aux["logits"].shape[1] for aux in outputs.auxiliary_outputs] == [10]
    denoising = outputs.training_queries["denoising"]
    assert denoising["layout"] == {"groups": 5, "group_size": GROUP_SIZE, "contrastive": False}
    assert denoising["last_hidden_state"].shape == (2, 5 * GROUP_SIZE, 64)
    assert denoising["intermediate_hidden_states"].shape == (2, 2, 5 * GROUP_SIZE, 64)  # (layers, B, P, D)
    # the criterion (loss.py) reconstructs target j with query g * S + j of every group g, normalized by boxes x groups
    assert {"loss_ce_dn", "loss_bbox_dn", "loss_giou_dn", "loss_ce_dn_0", "loss_bbox_dn_0"} <= set(outputs.loss_dict)
    boxes = model.bbox_predictor(denoising["last_hidden_state"]).sigmoid()
    error = sum((boxes[i, g * GROUP_SIZE + j] - box).abs().sum()
                for i, target in enumerate(LABELS) for j, box in enumerate(target["boxes"]) for g in range(5))
    torch.testing.assert_close(outputs.loss_dict["loss_bbox_dn"], error / (3 * 5))
    outputs.loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.model.training_queries.label_embedding.weight.grad.abs().sum() > 0


def decoded(model, monkeypatch, perturb_query=None):
    """The decoder's outputs in training with LABELS, as [denoising | object] queries (layers, B, P + Q, D); with
    `perturb_query` the content of that denoising query of image 0 changes."""
    queries = model.model.training_queries
    build = type(queries).denoising_queries.__get__(queries)

    def perturbed(labels, config):
        denoising = build(labels, config)
        if perturb_query is not None:
            denoising.content[0, perturb_query] += 3.0
        return denoising

    monkeypatch.setattr(queries, "denoising_queries", perturbed)
    torch.manual_seed(1)  # the same noise draws
    with torch.no_grad():
        outputs = model.train().model(images(), labels=LABELS)
    return torch.cat([outputs.training_queries["denoising"]["intermediate_hidden_states"],
                      outputs.intermediate_hidden_states], dim=2)


def changed_queries(before, after) -> torch.Tensor:
    """(B, P + Q) bool: queries whose output changed in any layer."""
    return (after - before).abs().amax(dim=(0, 3)) > 0


def test_object_queries_never_see_the_ground_truth(monkeypatch):
    """A changed denoising query changes its own group only (DN-DETR's attention mask): neither the object
    queries nor the other groups read it."""
    _, model = pair()
    before = decoded(model, monkeypatch)
    group = 3
    after = decoded(model, monkeypatch, perturb_query=group * GROUP_SIZE)  # image 0's first box, group 3
    changed = changed_queries(before, after)
    own_group = torch.zeros_like(changed[0])
    own_group[group * GROUP_SIZE:(group + 1) * GROUP_SIZE] = True
    assert changed[0].equal(own_group), changed[0]  # its group-mate reads it; nothing else does
    assert not changed[1].any()


def test_denoising_queries_see_the_object_queries(monkeypatch):
    """The other direction is open: every group reads the object queries (DN-DETR)."""
    _, model = pair()
    before = decoded(model, monkeypatch)
    with torch.no_grad():
        model.model.query_position_embeddings.weight[4] += 1.0
    after = decoded(model, monkeypatch)
    assert changed_queries(before, after).all()


@pytest.mark.parametrize("additions", [DN_DETR, {**DN_DETR, **ONE_TO_MANY}], ids=["denoising", "both"])
def test_batch_without_boxes_gives_every_parameter_a_gradient(additions):
    """DistributedDataParallel waits for every parameter's gradient on every rank."""
    _, model = pair(additions=additions)
    outputs = model.train()(images(), labels=NO_BOXES)
    assert outputs.training_queries["denoising"]["last_hidden_state"].shape[1] == 0
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_training_adds_one_to_many_queries_matched_to_repeated_targets():
    _, model = pair(additions=ONE_TO_MANY)
    outputs = model.train()(images(), labels=LABELS)
    assert outputs.logits.shape == (2, 10, 4)  # the object queries only
    one_to_many = outputs.training_queries["one_to_many"]
    assert one_to_many["last_hidden_state"].shape == (2, 12, 64) and "denoising" not in outputs.training_queries
    assert {"loss_ce_one2many", "loss_bbox_one2many", "loss_giou_one2many", "loss_ce_0_one2many"} <= set(
        outputs.loss_dict)
    # matched to LABELS repeated k = 3 times: every target is assigned three of the twelve queries
    logits, boxes = model._heads(one_to_many["last_hidden_state"])
    repeated = [{**t, "class_labels": t["class_labels"].repeat(3), "boxes": t["boxes"].repeat(3, 1)} for t in LABELS]
    indices = SetCriterion.from_config(model.config).matcher(
        {"logits": logits, "pred_boxes": boxes}, repeated)
    assert [len(queries) for queries, _ in indices] == [6, 3]
    error = sum((boxes[i, q] - repeated[i]["boxes"][t]).abs().sum() for i, (qs, ts) in enumerate(indices)
                for q, t in zip(qs, ts))
    torch.testing.assert_close(outputs.loss_dict["loss_bbox_one2many"], error / 9)
    outputs.loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.model.training_queries.one_to_many.weight.grad.abs().sum() > 0


def test_object_queries_never_see_the_one_to_many_queries():
    """H-DETR's mask: changed one-to-many queries change nothing of the object queries, whose outputs are the
    paper's model's in the same training step (to rounding: the masked attention may take another kernel)."""
    paper, model = pair(additions=ONE_TO_MANY)
    with torch.no_grad():
        expected = paper.train().model(images(), labels=LABELS)
        got = model.train().model(images(), labels=LABELS)
        model.model.training_queries.one_to_many.weight.mul_(-2.0)
        perturbed = model.model(images(), labels=LABELS)
    torch.testing.assert_close(got.intermediate_hidden_states, expected.intermediate_hidden_states)
    torch.testing.assert_close(perturbed.intermediate_hidden_states, got.intermediate_hidden_states, rtol=0, atol=0)
    changed = perturbed.training_queries["one_to_many"]["last_hidden_state"] - got.training_queries["one_to_many"][
        "last_hidden_state"]
    assert changed.abs().amax(dim=(0, 2)).gt(0).all() and expected.training_queries is None


@pytest.mark.parametrize("additions", [DN_DETR, {**DN_DETR, **ONE_TO_MANY}], ids=["denoising", "both"])
def test_saved_model_loads_in_transformers_with_the_same_outputs(tmp_path, additions):
    _, model = pair(additions=additions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):  # trained with denoising: the shared weights and the training-only ones move
        optimizer.zero_grad()
        model.train()(images(), labels=LABELS).loss.backward()
        optimizer.step()
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert not [key for key in f.keys() if "training_queries" in key]
    # transformers' DETR with auxiliary_loss re-normalizes each decoder layer's input (test_conversion_transformers)
    theirs, info = transformers.DetrForObjectDetection.from_pretrained(tmp_path, auxiliary_loss=False,
                                                                       output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ours, info = DetrForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert ours.config.denoising_groups == 5  # the recipe stays in the config for a further fine-tune
    with torch.no_grad():
        expected = model.eval()(images())
        for loaded in (theirs.eval(), ours.eval()):
            got = loaded(images())
            torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, rtol=1e-4, atol=1e-4)


def test_segmentation_model_trains_with_denoising(tmp_path):
    """DetrForSegmentation's masks and mask losses read the object queries only; its save leaves the denoising
    parameters out too."""
    _, model = pair(DetrForSegmentation, encoder_attention_heads=8)  # the mask head's GroupNorm: 64 + 8 channels
    generator = torch.Generator().manual_seed(0)
    labels = [{**t, "masks": (torch.rand(len(t["boxes"]), 64, 80, generator=generator) > 0.5).float()} for t in LABELS]
    outputs = model.train()(images(), labels=labels)
    assert outputs.pred_masks.shape[:2] == (2, 10)
    assert {"loss_ce_dn", "loss_mask", "loss_dice"} <= set(outputs.loss_dict) and torch.isfinite(outputs.loss)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert not [key for key in f.keys() if "training_queries" in key]
