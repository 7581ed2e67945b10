"""Training extras of the set criterion: denoising (DN-DETR / DINO), one-to-many (H-DETR) and the varifocal
loss (RT-DETR), each against an independent computation or transformers' reference."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import random_labels
from torchvision.ops import sigmoid_focal_loss
from transformers import RTDetrConfig
from transformers.loss.loss_rt_detr import RTDetrLoss

from detrkit.modeling.loss import SetCriterion
from detrkit.modeling.matcher import HungarianMatcher

NUM_CLASSES = 5


def _predictions(batch, queries, classes=NUM_CLASSES, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "logits": torch.randn(batch, queries, classes, generator=generator),
        "pred_boxes": torch.rand(batch, queries, 4, generator=generator) * 0.5 + 0.2,
    }


def _criterion(focal=True, **kwargs):
    return SetCriterion(NUM_CLASSES, HungarianMatcher(2, 5, 2, use_focal_loss=focal), use_focal_loss=focal, **kwargs)


def _denoising(labels, groups, classes=NUM_CLASSES, shift=0.0):
    """Contrastive dn outputs whose positive query g*S + j predicts target j's box (cx moved by `shift`);
    negatives and padding are random. The one auxiliary layer reproduces the boxes exactly."""
    size = 2 * max(len(t["class_labels"]) for t in labels)
    main, aux = (_predictions(len(labels), groups * size, classes, seed=seed) for seed in (1, 2))
    for i, target in enumerate(labels):
        for g in range(groups):
            positives = slice(g * size, g * size + len(target["boxes"]))
            main["pred_boxes"][i, positives] = target["boxes"] + torch.tensor([shift, 0, 0, 0])
            aux["pred_boxes"][i, positives] = target["boxes"]
    return {**main, "auxiliary_outputs": [aux], "groups": groups, "group_size": size, "contrastive": True}


def test_denoising_losses_use_the_fixed_assignment_and_dino_normalization():
    labels = random_labels(2, NUM_CLASSES, counts=[3, 1])
    dn = _denoising(labels, groups=2, shift=0.01)
    losses = _criterion()({**_predictions(2, 8), "denoising": dn}, labels)
    # every positive is off by 0.01 in one coordinate: sum over 4 boxes x 2 groups / (4 boxes x 2 groups)
    torch.testing.assert_close(losses["loss_bbox_dn"], torch.tensor(0.01))
    assert losses["loss_bbox_dn_0"] < 1e-5 and losses["loss_giou_dn_0"] < 1e-5
    # focal: one-hot at the positives only, contrastive negatives and padding are "no object"
    onehot = torch.zeros_like(dn["logits"])
    for i, target in enumerate(labels):
        for g in range(2):
            for j, c in enumerate(target["class_labels"]):
                onehot[i, g * dn["group_size"] + j, c] = 1
    expected = sigmoid_focal_loss(dn["logits"], onehot, 0.25, 2.0, reduction="sum") / (4 * 2)
    torch.testing.assert_close(losses["loss_ce_dn"], expected)
    assert not any(name.startswith("cardinality_error_dn") for name in losses)


def test_cross_entropy_denoising_sees_only_the_positive_queries():
    labels = random_labels(2, NUM_CLASSES, counts=[2, 1])
    dn = _denoising(labels, groups=3, classes=NUM_CLASSES + 1)
    losses = _criterion(focal=False)({**_predictions(2, 8, NUM_CLASSES + 1), "denoising": dn}, labels)
    log_prob, size = dn["logits"].log_softmax(-1), dn["group_size"]
    classes = [t["class_labels"] for t in labels]
    positives = [(i, g * size + j, c) for i, cs in enumerate(classes) for g in range(3) for j, c in enumerate(cs)]
    torch.testing.assert_close(losses["loss_ce_dn"], -torch.stack([log_prob[p] for p in positives]).mean())


def test_denoising_without_boxes_is_zero_but_reaches_every_output():
    labels = random_labels(2, NUM_CLASSES, counts=[0, 0])
    dn = {**_predictions(2, 4, seed=3), "groups": 1, "group_size": 4, "contrastive": True}
    dn["auxiliary_outputs"] = [_predictions(2, 4, seed=4)]
    leaves = [dn["logits"], dn["pred_boxes"], dn["auxiliary_outputs"][0]["logits"]]
    for leaf in leaves:
        leaf.requires_grad_()
    criterion = _criterion()
    losses = criterion({**_predictions(2, 8), "denoising": dn}, labels)
    dn_names = {f"loss_{kind}_dn{layer}" for kind in ("ce", "bbox", "giou") for layer in ("", "_0")}
    assert dn_names <= set(losses) and all(losses[name] == 0 for name in dn_names)
    criterion.weighted_total(losses).backward()
    for leaf in leaves:
        assert leaf.grad is not None and (leaf.grad == 0).all()


@pytest.mark.parametrize("k", [1, 3])
def test_one_to_many_matches_repeated_targets(k):
    labels = random_labels(2, NUM_CLASSES, counts=[3, 2])
    one_to_many = {**_predictions(2, 12, seed=5), "auxiliary_outputs": [_predictions(2, 12, seed=6)]}
    losses = _criterion(k_one_to_many=k)({**_predictions(2, 8), "one_to_many": one_to_many}, labels)
    repeated = [{"class_labels": t["class_labels"].repeat(k), "boxes": t["boxes"].repeat(k, 1)} for t in labels]
    expected = _criterion()(one_to_many, repeated)
    assert {name for name in losses if name.endswith("_one2many")} == {f"{name}_one2many" for name in expected}
    for name, value in expected.items():
        torch.testing.assert_close(losses[f"{name}_one2many"], value, msg=name)


def test_varifocal_equals_transformers_rt_detr():
    labels = random_labels(2, NUM_CLASSES, counts=[4, 2])
    outputs = _predictions(2, 10)
    criterion = _criterion(classification_loss="varifocal")
    indices = criterion.matcher(outputs, labels)
    reference = RTDetrLoss(RTDetrConfig(num_labels=NUM_CLASSES)).loss_labels_vfl(outputs, labels, indices, 6.0)
    torch.testing.assert_close(criterion(outputs, labels)["loss_ce"], reference["loss_vfl"])
    # the IoU target is detached: the box gradient comes from the box losses only
    outputs["logits"].requires_grad_(), outputs["pred_boxes"].requires_grad_()
    criterion.loss_labels(outputs, labels, indices, 6.0).backward()
    assert outputs["pred_boxes"].grad is None


def test_weighted_total_parses_every_name_and_weights_one_to_many_by_lambda():
    config = SimpleNamespace(num_labels=NUM_CLASSES, class_cost=2, bbox_cost=5, giou_cost=2)
    config.__dict__.update(class_loss_coefficient=2.0, bbox_loss_coefficient=5.0, giou_loss_coefficient=3.0)
    old = SetCriterion.from_config(config, use_focal_loss=True)
    assert (old.classification, old.k_one_to_many, old.lambda_one_to_many) == ("focal", 6, 1.0)
    config.__dict__.update(classification_loss="varifocal", k_one_to_many=4, lambda_one_to_many=0.5)
    criterion = SetCriterion.from_config(config, use_focal_loss=True)
    assert (criterion.classification, criterion.k_one_to_many) == ("varifocal", 4)
    one = torch.tensor(1.0)
    names = ["loss_ce", "loss_bbox_dn_0", "loss_giou_enc", "loss_ce_2_one2many", "loss_giou_one2many"]
    losses = {**dict.fromkeys(names, one), "cardinality_error": 100 * one, "cardinality_error_one2many": 100 * one}
    torch.testing.assert_close(criterion.weighted_total(losses), torch.tensor(2 + 5 + 3 + 0.5 * (2 + 3)))
