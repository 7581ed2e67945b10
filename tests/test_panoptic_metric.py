"""PQ / SQ / RQ: cases computed by hand (IoU with VOID left out of the union, crowd and VOID ignoring, things and
stuff averages), panopticapi's file interface and checks, and agreement with torchmetrics' PanopticQuality."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.detection import PanopticQuality as TorchmetricsPanopticQuality

from detrkit.metrics.panoptic import PanopticQuality, panoptic_prediction, panoptic_quality, pq_compute
from detrkit.processing.segmentation_annotations import SegmentationAnnotationError, id_to_rgb

CATEGORIES = [{"id": 1, "isthing": 1, "name": "a"}, {"id": 2, "isthing": 1, "name": "b"},
              {"id": 3, "isthing": 0, "name": "sky"}, {"id": 4, "isthing": 0, "name": "ground"}]


def hand_case():
    """10x10. Ground truth: thing 1 (cat 1) rows 0-4 x cols 0-4, stuff 2 (cat 3) rows 5-9, VOID rows 0-4 x cols 5-9.
    Prediction: 10 (cat 1) rows 0-4 x cols {0-3, 5} -> IoU 20 / (25 + 25 - 20 - 5 on VOID) = 0.8, TP;
    11 (cat 3) rows 7-9 -> IoU 30 / 50 = 0.6, TP; 12 (cat 2) rows 5-6 -> FP;
    13 (cat 1) rows 0-4 x cols 6-9, all on VOID -> ignored; col 4 of rows 0-4 predicted VOID."""
    gt = np.zeros((10, 10), np.int64)
    gt[0:5, 0:5] = 1
    gt[5:] = 2
    gt_segments = [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 25},
                   {"id": 2, "category_id": 3, "iscrowd": 0, "area": 50}]
    pred = np.zeros((10, 10), np.int64)
    pred[0:5, [0, 1, 2, 3, 5]] = 10
    pred[0:5, 6:] = 13
    pred[5:7] = 12
    pred[7:] = 11
    pred_segments = [{"id": 10, "category_id": 1}, {"id": 11, "category_id": 3}, {"id": 12, "category_id": 2},
                     {"id": 13, "category_id": 1}]
    return gt, gt_segments, pred, pred_segments


def test_hand_computed_case():
    metric = PanopticQuality(CATEGORIES)
    metric.update(*hand_case())
    result = metric.compute()
    assert result["per_class"][1] == pytest.approx({"pq": 0.8, "sq": 0.8, "rq": 1.0})
    assert result["per_class"][3] == pytest.approx({"pq": 0.6, "sq": 0.6, "rq": 1.0})
    assert result["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert result["per_class"][4] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # absent: not averaged
    assert result["Things"] == pytest.approx({"pq": 0.4, "sq": 0.4, "rq": 0.5, "n": 2})
    assert result["Stuff"] == pytest.approx({"pq": 0.6, "sq": 0.6, "rq": 1.0, "n": 1})
    assert result["All"] == pytest.approx({"pq": 1.4 / 3, "sq": 1.4 / 3, "rq": 2 / 3, "n": 3})
    gt, gt_segments, pred, pred_segments = hand_case()
    pairs = [({"segmentation": torch.from_numpy(gt), "segments_info": gt_segments},
              {"segmentation": torch.from_numpy(pred), "segments_info": pred_segments})]
    assert panoptic_quality(pairs, CATEGORIES) == result


def test_crowd_and_counts_accumulate_over_images():
    """Crowd (cat 1) rows 0-4; gt 2 (cat 1) rows 5-9 x cols 0-4. Prediction 1 (cat 1) rows 0-3, all on the crowd:
    ignored; 2 (cat 1) rows 5-9 x cols 0-1: IoU 10 / 25 -> FN + FP; 3 (cat 2) row 4, on cat 1's crowd: FP (the
    crowd of another category does not excuse it). The hand case added: counts and IoU sums add up."""
    gt = np.zeros((10, 10), np.int64)
    gt[0:5] = 5
    gt[5:, 0:5] = 6
    gt_segments = [{"id": 5, "category_id": 1, "iscrowd": 1}, {"id": 6, "category_id": 1, "iscrowd": 0}]
    pred = np.zeros((10, 10), np.int64)
    pred[0:4] = 1
    pred[5:, 0:2] = 2
    pred[4] = 3
    metric = PanopticQuality(CATEGORIES)
    metric.update(gt, gt_segments, pred, [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 1},
                                          {"id": 3, "category_id": 2}])
    assert dict(metric.stats)[1].tolist() == [0, 0, 1, 1] and dict(metric.stats)[2].tolist() == [0, 0, 1, 0]
    metric.update(*hand_case())
    assert metric.stats[1].tolist() == pytest.approx([0.8, 1, 1, 1])
    assert metric.stats[2].tolist() == [0, 0, 2, 0]
    assert metric.compute()["per_class"][1]["pq"] == pytest.approx(0.8 / 2)


def test_pq_compute_files_and_checks(tmp_path):
    gt, gt_segments, pred, pred_segments = hand_case()
    for name, ids in (("gt", gt), ("pred", pred)):
        (tmp_path / name).mkdir()
        Image.fromarray(id_to_rgb(ids)).save(tmp_path / name / "0.png")
    for name, segments in (("gt", gt_segments), ("pred", pred_segments)):
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "annotations": [{"image_id": 7, "file_name": "0.png", "segments_info": segments}],
            "categories": CATEGORIES}))
    result = pq_compute(str(tmp_path / "gt.json"), str(tmp_path / "pred.json"))
    assert result["All"]["pq"] == pytest.approx(1.4 / 3)

    metric = PanopticQuality(CATEGORIES)
    with pytest.raises(SegmentationAnnotationError, match="image 7: predicted segment id 13 is in the map but not"):
        metric.update(gt, gt_segments, pred, pred_segments[:3], image_id=7)
    with pytest.raises(SegmentationAnnotationError, match=r"predicted segment ids \[14\] are in segments_info but"):
        metric.update(gt, gt_segments, pred, pred_segments + [{"id": 14, "category_id": 1}])
    with pytest.raises(SegmentationAnnotationError, match="segment id 10 has unknown category_id 9"):
        metric.update(gt, gt_segments, pred, [dict(pred_segments[0], category_id=9)] + pred_segments[1:])
    with pytest.raises(ValueError, match="no 'isthing'"):
        PanopticQuality([{"id": 1}])


def test_panoptic_prediction_merges_fused_entries():
    segmentation = torch.tensor([[1, 1, 2], [3, 3, 0]], dtype=torch.int32)
    result = {"segmentation": segmentation, "segments_info": [
        {"id": 1, "label_id": 0, "was_fused": True, "score": 0.9}, {"id": 2, "label_id": 1, "was_fused": False,
                                                                    "score": 0.8},
        {"id": 1, "label_id": 0, "was_fused": True, "score": 0.7}, {"id": 3, "label_id": 2, "was_fused": False,
                                                                    "score": 0.6}]}
    ids, segments = panoptic_prediction(result, {0: 3, 1: 1, 2: 2})
    assert ids.tolist() == [[1, 1, 2], [3, 3, 0]]
    assert segments == [{"id": 1, "category_id": 3}, {"id": 2, "category_id": 1}, {"id": 3, "category_id": 2}]
    empty_ids, empty = panoptic_prediction({"segmentation": torch.zeros(2, 3) - 1, "segments_info": []})
    assert not empty_ids.any() and empty == []


def random_scene(rng, size=48):
    """Ground truth: both stuff classes as bands, 2-5 thing rectangles on top, a VOID strip. Prediction: the same
    scene with rectangles shifted, grown or dropped, some categories swapped, an extra rectangle; every pixel
    predicted (torchmetrics also discounts ground truth under predicted VOID, panopticapi does not), one segment
    per stuff class (torchmetrics merges a stuff class's segments, panopticapi does not)."""
    def draw(boxes, jitter):
        ids = np.zeros((size, size), np.int64)
        ids[: size // 2], ids[size // 2:] = 1, 2  # stuff: sky (3), ground (4)
        segments = [{"id": 1, "category_id": 3, "iscrowd": 0}, {"id": 2, "category_id": 4, "iscrowd": 0}]
        for k, (y, x, h, w, category) in enumerate(boxes):
            if jitter:
                if rng.random() < 0.15:
                    continue
                y, x = y + rng.integers(-3, 4), x + rng.integers(-3, 4)
                h, w = max(2, h + rng.integers(-3, 4)), max(2, w + rng.integers(-3, 4))
                category = 3 - category if rng.random() < 0.15 else category
            ids[max(y, 0): y + h, max(x, 0): x + w] = 10 + k
            segments.append({"id": 10 + k, "category_id": category, "iscrowd": 0})
        return ids, segments

    boxes = [(rng.integers(0, size - 8), rng.integers(0, size - 8), rng.integers(4, 16), rng.integers(4, 16),
              int(rng.integers(1, 3))) for _ in range(rng.integers(2, 6))]
    gt, gt_segments = draw(boxes, jitter=False)
    gt[:, :3] = 0  # VOID
    extra = [(rng.integers(0, size - 8), rng.integers(0, size - 8), 6, 6, 1)] if rng.random() < 0.5 else []
    pred, pred_segments = draw(boxes + extra, jitter=True)
    present = set(np.unique(gt).tolist())
    gt_segments = [s for s in gt_segments if s["id"] in present]
    present = set(np.unique(pred).tolist())
    return gt, gt_segments, pred, [s for s in pred_segments if s["id"] in present]


def torchmetrics_input(ids, segments, void_category=0):
    category = np.full(ids.shape, void_category, np.int64)
    for s in segments:
        category[ids == s["id"]] = s["category_id"]
    return torch.from_numpy(np.stack([category, ids], -1))


def test_agrees_with_torchmetrics():
    rng = np.random.default_rng(0)
    ours = PanopticQuality(CATEGORIES)
    theirs = TorchmetricsPanopticQuality(things={1, 2}, stuffs={3, 4}, return_sq_and_rq=True, return_per_class=True)
    for _ in range(12):
        gt, gt_segments, pred, pred_segments = random_scene(rng)
        ours.update(gt, gt_segments, pred, pred_segments)
        theirs.update(torchmetrics_input(pred, pred_segments)[None], torchmetrics_input(gt, gt_segments)[None])
    result = ours.compute()
    expected = theirs.compute().reshape(4, 3)  # per class (pq, sq, rq), things then stuff, ids sorted
    per_class = [result["per_class"][c] for c in (1, 2, 3, 4)]
    assert np.allclose([[c["pq"], c["sq"], c["rq"]] for c in per_class], expected.numpy(), atol=1e-6)
    tp_fp_fn = ours.stats[1][1:] + ours.stats[2][1:]
    assert tp_fp_fn[0] >= 10 and tp_fp_fn[1] >= 3 and tp_fp_fn[2] >= 3  # matches and both kinds of error occurred
    average = TorchmetricsPanopticQuality(things={1, 2}, stuffs={3, 4}, return_sq_and_rq=True)
    rng = np.random.default_rng(0)
    for _ in range(12):
        gt, gt_segments, pred, pred_segments = random_scene(rng)
        average.update(torchmetrics_input(pred, pred_segments)[None], torchmetrics_input(gt, gt_segments)[None])
    assert np.allclose([result["All"][k] for k in ("pq", "sq", "rq")], average.compute().numpy(), atol=1e-6)
