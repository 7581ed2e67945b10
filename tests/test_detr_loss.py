"""Matcher and set criterion: both classification modes against transformers' reference implementations,
images without objects, encoder-proposal losses, num_boxes averaged across processes."""

import os

import pytest
import torch
import torch.multiprocessing as mp
from helpers import random_labels
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher, DeformableDetrImageLoss
from transformers.loss.loss_for_object_detection import HungarianMatcher as ReferenceMatcher
from transformers.loss.loss_for_object_detection import ImageLoss

from detrkit.modeling import HungarianMatcher, SetCriterion
from detrkit.modeling.loss import _average_across_processes, compute_set_loss

NUM_CLASSES = 5


def _predictions(batch=2, queries=10, classes=NUM_CLASSES + 1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "logits": torch.randn(batch, queries, classes, generator=generator),
        "pred_boxes": torch.rand(batch, queries, 4, generator=generator) * 0.5 + 0.2,
    }


def test_matcher_recovers_a_planted_assignment():
    labels = random_labels(1, NUM_CLASSES, counts=[4])
    outputs = _predictions(batch=1, queries=6)
    planted = torch.tensor([5, 0, 3, 1])  # target j is predicted exactly by query planted[j]
    outputs["pred_boxes"][0, planted] = labels[0]["boxes"]
    outputs["logits"][0, planted] = -10.0
    outputs["logits"][0, planted, labels[0]["class_labels"]] = 10.0
    (queries, targets), = HungarianMatcher(1, 5, 2)(outputs, labels)
    assert dict(zip(targets.tolist(), queries.tolist())) == dict(enumerate(planted.tolist()))


@pytest.mark.parametrize("focal", [False, True])
def test_matcher_equals_transformers(focal):
    labels = random_labels(3, NUM_CLASSES, counts=[3, 0, 5])
    outputs = _predictions(batch=3, classes=NUM_CLASSES if focal else NUM_CLASSES + 1)
    reference = (DeformableDetrHungarianMatcher if focal else ReferenceMatcher)(class_cost=2, bbox_cost=5, giou_cost=2)
    ours = HungarianMatcher(2, 5, 2, use_focal_loss=focal)
    for (q1, t1), (q2, t2) in zip(ours(outputs, labels), reference(outputs, labels)):
        assert q1.tolist() == q2.tolist() and t1.tolist() == t2.tolist()


def _compare(ours: dict, reference: dict):
    assert set(ours) == set(reference)
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name].reshape(ours[name].shape), msg=name)


def test_cross_entropy_criterion_equals_transformers_with_auxiliary_outputs():
    labels = random_labels(2, NUM_CLASSES, counts=[4, 0])
    outputs = {**_predictions(), "auxiliary_outputs": [_predictions(seed=1), _predictions(seed=2)]}
    matcher = HungarianMatcher(1, 5, 2)
    reference = ImageLoss(ReferenceMatcher(1, 5, 2), NUM_CLASSES, 0.1, ["labels", "boxes", "cardinality"])
    _compare(SetCriterion(NUM_CLASSES, matcher, eos_coefficient=0.1)(outputs, labels), reference(outputs, labels))


def test_focal_criterion_equals_transformers_deformable():
    labels = random_labels(2, NUM_CLASSES, counts=[3, 2])
    outputs = {**_predictions(classes=NUM_CLASSES), "auxiliary_outputs": [_predictions(classes=NUM_CLASSES, seed=3)]}
    matcher = HungarianMatcher(2, 5, 2, use_focal_loss=True)
    reference = DeformableDetrImageLoss(
        DeformableDetrHungarianMatcher(2, 5, 2), NUM_CLASSES, 0.25, ["labels", "boxes", "cardinality"]
    )
    ours = SetCriterion(NUM_CLASSES, matcher, use_focal_loss=True, focal_alpha=0.25)(outputs, labels)
    _compare(ours, reference(outputs, labels))


def test_encoder_proposals_are_matched_class_agnostically():
    labels = random_labels(2, NUM_CLASSES, counts=[3, 1])
    labels[0]["class_labels"][:] = 4
    outputs = {**_predictions(classes=NUM_CLASSES), "enc_outputs": _predictions(classes=NUM_CLASSES, seed=5)}
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(2, 5, 2, use_focal_loss=True), use_focal_loss=True)
    losses = criterion(outputs, labels)
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc", "cardinality_error_enc"} <= set(losses)
    binary = [{**t, "class_labels": torch.zeros_like(t["class_labels"])} for t in labels]
    expected = criterion({"logits": outputs["enc_outputs"]["logits"], "pred_boxes": outputs["enc_outputs"]["pred_boxes"]}, binary)
    torch.testing.assert_close(losses["loss_ce_enc"], expected["loss_ce"])
    total = criterion.weighted_total(losses)
    manual = sum(w * (losses[k] + losses[k + "_enc"]) for k, w in criterion.weight_dict.items())
    torch.testing.assert_close(total, manual)


def test_no_objects_anywhere_gives_finite_loss_and_gradients():
    outputs = {k: v.requires_grad_() for k, v in _predictions().items()}
    labels = random_labels(2, NUM_CLASSES, counts=[0, 0])
    loss, loss_dict = compute_set_loss(SetCriterion(NUM_CLASSES, HungarianMatcher(1, 5, 2)), outputs, labels)
    loss.backward()
    assert torch.isfinite(loss) and loss_dict["loss_bbox"] == 0
    assert torch.isfinite(outputs["logits"].grad).all()


def _rank(rank, counts, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=len(counts))
    try:
        (folder / str(rank)).write_text(str(_average_across_processes(counts[rank], "cpu")))
    finally:
        torch.distributed.destroy_process_group()


def test_num_boxes_is_averaged_across_processes(tmp_path):
    port = 29500 + os.getpid() % 1000
    mp.start_processes(_rank, args=([2, 6], port, tmp_path), nprocs=2, start_method="fork")
    assert [float((tmp_path / str(rank)).read_text()) for rank in range(2)] == [4.0, 4.0]
