"""Mask AP of instance-segmentation outputs through pycocotools (COCOeval, iouType "segm"), on cases whose IoUs
are known by hand, fed from transformers-format `post_process_instance_segmentation` results."""

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from detrkit.metrics.coco_ap import coco_mask_evaluate
from detrkit.processing import DetrImageProcessor


@dataclass
class Record:
    image_id: int
    width: int
    height: int
    annotations: list = field(default_factory=list)


def square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def records():
    # Two objects of label 0 and one of label 1; polygons on pixel borders cover exactly these pixels.
    return [Record(1, 40, 30, [
        {"category_id": 0, "segmentation": square(0, 0, 10, 10), "bbox": [0, 0, 10, 10], "area": 100.0},
        {"category_id": 1, "segmentation": square(20, 10, 40, 30), "bbox": [20, 10, 20, 20], "area": 400.0},
    ]), Record(2, 40, 30, [
        {"category_id": 0, "segmentation": square(5, 5, 25, 25), "bbox": [5, 5, 20, 20], "area": 400.0},
    ])]


def prediction(boxes):
    """A segment-id map at the original size with one segment per (label, score, x0, y0, x1, y1)."""
    segmentation = torch.zeros(30, 40, dtype=torch.int32)
    info = []
    for k, (label, score, x0, y0, x1, y1) in enumerate(boxes):
        segmentation[y0:y1, x0:x1] = k + 1
        info.append({"id": k + 1, "label_id": label, "was_fused": False, "score": score})
    return {"segmentation": segmentation, "segments_info": info}


def test_perfect_masks_score_one():
    predictions = {1: prediction([(0, 0.9, 0, 0, 10, 10), (1, 0.8, 20, 10, 40, 30)]),
                   2: prediction([(0, 0.7, 5, 5, 25, 25)])}
    result = coco_mask_evaluate(records(), predictions, {0: "a", 1: "b"})
    assert result["map"] == pytest.approx(1.0) and result["map_50"] == pytest.approx(1.0)


def test_iou_between_half_and_three_quarters():
    """Image 2's object predicted 5 px too low: IoU 300 / 500 = 0.6, a match at IoU .50 to .60, not from .65 up
    (label 0's AP 6/10 of the thresholds); label 1 predicted exactly."""
    predictions = {1: prediction([(0, 0.9, 0, 0, 10, 10), (1, 0.8, 20, 10, 40, 30)]),
                   2: prediction([(0, 0.7, 5, 10, 25, 30)])}
    result = coco_mask_evaluate(records(), predictions, {0: "a", 1: "b"})
    # Label 0: recall 1 at IoU .50-.60 (3 thresholds), 1/2 from .65 on (7 thresholds), precision 1 on what it finds.
    label_0 = (3 * 1.0 + 7 * 0.5049504950495051) / 10  # COCO's 101-point interpolation gives 51/101 for recall 1/2
    assert result["map"] == pytest.approx((label_0 + 1.0) / 2, abs=1e-6)
    assert result["map_50"] == pytest.approx(1.0) and result["map_75"] == pytest.approx((0.5049504950495051 + 1) / 2)


def test_from_post_processing():
    """Model outputs -> post_process_instance_segmentation at the original size -> mask AP 1 for exact masks.
    (Every pixel goes to some kept query, so the two objects tile the image: left and right halves.)"""
    logits = torch.full((1, 3, 3), -10.0)
    logits[0, 0, 0] = logits[0, 1, 1] = 10.0
    logits[0, 2, 2] = 10.0  # "no object"
    masks = torch.full((1, 3, 15, 20), -10.0)
    masks[0, 0, :, :10] = 10.0
    masks[0, 1, :, 10:] = 10.0
    result = DetrImageProcessor().post_process_instance_segmentation(
        SimpleNamespace(logits=logits, pred_masks=masks), target_sizes=[(30, 40)])[0]
    halves = [Record(1, 40, 30, [
        {"category_id": 0, "segmentation": square(0, 0, 20, 30), "bbox": [0, 0, 20, 30], "area": 600.0},
        {"category_id": 1, "segmentation": square(20, 0, 40, 30), "bbox": [20, 0, 20, 30], "area": 600.0}])]
    metrics = coco_mask_evaluate(halves, {1: result}, {0: "a", 1: "b"})
    assert metrics["map"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="image 2: no prediction"):
        coco_mask_evaluate(records(), {1: result}, {0: "a", 1: "b"})
