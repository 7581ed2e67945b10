"""The COCO metric equals pycocotools' COCOeval run directly on the same predictions."""
import contextlib
import io
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detrkit.metrics.coco_ap import STAT_NAMES, CocoDetectionMetric, CocoEvaluator, coco_evaluate

METRIC_FILE = Path(__file__).resolve().parents[1] / "scripts" / "detrkit" / "metrics" / "coco_ap.py"


def direct_cocoeval(gt_images, gt_annotations, detections, num_classes):
    """pycocotools the way its README uses it: COCO ground truth + loadRes + COCOeval."""
    gt = COCO()
    gt.dataset = {"images": [{"id": i} for i in gt_images],
                  "annotations": [dict(a, id=k + 1) for k, a in enumerate(gt_annotations)],
                  "categories": [{"id": c} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        coco_eval = COCOeval(gt, gt.loadRes(detections), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return dict(zip(STAT_NAMES, coco_eval.stats.tolist()))


def random_case(seed, num_images=6, num_classes=3):
    """Random ground truth (some crowd, all area ranges) and noisy detections of it plus false positives."""
    rng = np.random.default_rng(seed)
    gt_annotations, detections, predictions, references = [], [], [], []
    for image_id in range(10, 10 + num_images):
        n = rng.integers(0, 6)
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(5, 200, (n, 2))
        labels = rng.integers(0, num_classes, n)
        crowd = (rng.random(n) < 0.1).astype(int)
        anns = [{"image_id": image_id, "bbox": [*xy[i], *wh[i]], "category_id": int(labels[i]),
                 "area": float(wh[i].prod() * rng.uniform(0.5, 1)), "iscrowd": int(crowd[i])} for i in range(n)]
        gt_annotations += anns
        references.append({"image_id": image_id, "annotations": [{k: v for k, v in a.items() if k != "image_id"}
                                                                 for a in anns]})
        # detections: jittered copies (sometimes relabelled) + random boxes
        m = n + rng.integers(0, 4)
        det_xy = np.concatenate([xy + rng.normal(0, 8, (n, 2)), rng.uniform(0, 300, (m - n, 2))])
        det_wh = np.concatenate([wh * rng.uniform(0.8, 1.2, (n, 2)), rng.uniform(5, 200, (m - n, 2))])
        det_labels = np.concatenate([np.where(rng.random(n) < 0.8, labels, rng.integers(0, num_classes, n)),
                                     rng.integers(0, num_classes, m - n)])
        scores = rng.random(m)
        boxes_xyxy = np.concatenate([det_xy, det_xy + det_wh], axis=1)
        predictions.append({"scores": torch.tensor(scores, dtype=torch.float64), "labels": torch.tensor(det_labels),
                            "boxes": torch.tensor(boxes_xyxy, dtype=torch.float64)})
        detections += [{"image_id": image_id, "category_id": int(det_labels[j]), "score": float(scores[j]),
                        "bbox": [*det_xy[j], *det_wh[j]]} for j in range(m)]
    return predictions, references, gt_annotations, detections


@pytest.mark.parametrize("seed", range(5))
def test_equals_cocoeval_on_random_predictions(seed):
    predictions, references, gt_annotations, detections = random_case(seed)
    expected = direct_cocoeval([r["image_id"] for r in references], gt_annotations, detections, 3)
    ours = coco_evaluate(predictions, references, {0: "a", 1: "b", 2: "c"})
    assert ours == expected  # exactly: same inputs, same COCOeval


def test_evaluate_metric_and_evaluator_agree_with_cocoeval():
    predictions, references, gt_annotations, detections = random_case(7, num_images=8)
    expected = direct_cocoeval([r["image_id"] for r in references], gt_annotations, detections, 3)
    id2label = {0: "a", 1: "b", 2: "c"}

    metric = evaluate.load(str(METRIC_FILE))  # the file travels alone
    for start in range(0, 8, 3):
        metric.add_batch(predictions=predictions[start:start + 3], references=references[start:start + 3])
    loaded = metric.compute(id2label=id2label)
    assert {k: loaded[k] for k in STAT_NAMES} == pytest.approx(expected, abs=1e-12)

    direct = CocoDetectionMetric().compute(predictions=predictions, references=references, id2label=id2label)
    assert {k: direct[k] for k in STAT_NAMES} == pytest.approx(expected, abs=1e-12)

    evaluator = CocoEvaluator(id2label)
    evaluator.update(predictions[:5], references[:5])
    evaluator.update(predictions[5:], references[5:])
    assert evaluator.compute() == expected


def test_perfect_predictions_score_one():
    references = [{"image_id": 1, "annotations": [{"bbox": [10, 20, 20, 30], "category_id": 0},  # one per area range
                                                  {"bbox": [100, 100, 150, 120], "category_id": 1}]},
                  {"image_id": 2, "annotations": [{"bbox": [5, 5, 50, 50], "category_id": 1}]}]
    predictions = [{"scores": [0.9, 0.8], "labels": [0, 1], "boxes": [[10, 20, 30, 50], [100, 100, 250, 220]]},
                   {"scores": [0.7], "labels": [1], "boxes": [[5, 5, 55, 55]]}]
    results = coco_evaluate(predictions, references)
    for key in ("map", "map_50", "map_75", "mar_1", "mar_10", "mar_100", "map_small", "map_medium", "map_large"):
        assert results[key] == pytest.approx(1.0), key


def test_crafted_cases_with_known_ap():
    # One object; a confident false positive ranks above the true positive: precision 1/2 at every recall.
    references = [{"image_id": 0, "annotations": [{"bbox": [0, 0, 50, 50], "category_id": 0}]}]
    predictions = [{"scores": [0.9, 0.5], "labels": [0, 0], "boxes": [[200, 200, 250, 250], [0, 0, 50, 50]]}]
    results = coco_evaluate(predictions, references)
    assert results["map"] == pytest.approx(0.5) and results["mar_1"] == 0.0 and results["mar_10"] == 1.0

    # Two objects, one found exactly: precision 1 up to recall 0.5 -> 51 of COCO's 101 recall points.
    references = [{"image_id": 0, "annotations": [{"bbox": [0, 0, 50, 50], "category_id": 0},
                                                  {"bbox": [100, 100, 50, 50], "category_id": 0}]}]
    predictions = [{"scores": [0.9], "labels": [0], "boxes": [[0, 0, 50, 50]]}]
    results = coco_evaluate(predictions, references)
    assert results["map"] == pytest.approx(51 / 101) and results["mar_100"] == pytest.approx(0.5)

    # A box shifted by 10 px: IoU = 40*50 / (2*50*50 - 40*50) = 2/3, a hit at the thresholds 0.50..0.65 and a
    # miss at 0.70..0.95 -> AP = 4/10.
    predictions = [{"scores": [0.9], "labels": [0], "boxes": [[10, 0, 60, 50]]}]
    references = [{"image_id": 0, "annotations": [{"bbox": [0, 0, 50, 50], "category_id": 0}]}]
    results = coco_evaluate(predictions, references)
    assert results["map_50"] == pytest.approx(1.0) and results["map_75"] == 0.0 and results["map"] == pytest.approx(0.4)


def test_processor_labels_as_references_match_coco_style():
    """The training loop hands the processor's labels (normalized cxcywh, resized area, orig_size)."""
    predictions, references, _, _ = random_case(3, num_images=4)
    for ref in references:  # processor labels drop crowd objects; compare without them
        ref["annotations"] = [a for a in ref["annotations"] if not a["iscrowd"]]
    labels = []
    for ref in references:
        boxes = torch.tensor([a["bbox"] for a in ref["annotations"]], dtype=torch.float64).reshape(-1, 4)
        orig_h, orig_w, size_h, size_w = 480, 640, 240, 320
        cxcywh = torch.cat([boxes[:, :2] + boxes[:, 2:] / 2, boxes[:, 2:]], 1) / torch.tensor([orig_w, orig_h] * 2)
        labels.append({"image_id": torch.tensor([ref["image_id"]]), "boxes": cxcywh,
                       "class_labels": torch.tensor([a["category_id"] for a in ref["annotations"]]),
                       "area": torch.tensor([a["area"] / 4 for a in ref["annotations"]], dtype=torch.float64),
                       "iscrowd": torch.zeros(len(ref["annotations"]), dtype=torch.int64),
                       "orig_size": torch.tensor([orig_h, orig_w]), "size": torch.tensor([size_h, size_w])})
    id2label = {0: "a", 1: "b", 2: "c"}
    expected = coco_evaluate(predictions, references, id2label)
    assert coco_evaluate(predictions, labels, id2label) == pytest.approx(expected, abs=1e-9)
    via_metric = CocoDetectionMetric().compute(predictions=predictions, references=labels, id2label=id2label)
    assert via_metric == pytest.approx(expected, abs=1e-9)


def test_per_class_and_empty_predictions():
    references = [{"image_id": 0, "annotations": [{"bbox": [0, 0, 50, 50], "category_id": 0},
                                                  {"bbox": [60, 60, 50, 50], "category_id": 1}]}]
    predictions = [{"scores": [0.9], "labels": [0], "boxes": [[0, 0, 50, 50]]}]
    results = coco_evaluate(predictions, references, {0: "cat", 1: "dog", 2: "emu"}, per_class=True)
    assert results["map_per_class"] == {"cat": pytest.approx(1.0), "dog": 0.0, "emu": -1.0}
    assert results["mar_100_per_class"] == {"cat": 1.0, "dog": 0.0, "emu": -1.0}
    empty = coco_evaluate([{"scores": [], "labels": [], "boxes": []}], references)
    assert empty["map"] == 0.0 and empty["mar_100"] == 0.0


def test_bad_inputs_are_named():
    references = [{"image_id": 0, "annotations": [{"bbox": [0, 0, 5, 5]}]}]
    with pytest.raises(ValueError, match="image 0, annotation 0"):
        coco_evaluate([{"scores": [], "labels": [], "boxes": []}], references)
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        coco_evaluate([{"scores": [], "labels": [], "boxes": []}], [{"image_id": 0, "annotations": []}] * 2)
    with pytest.raises(ValueError, match="appears twice"):
        coco_evaluate([{"scores": [], "labels": [], "boxes": []}] * 2, [{"image_id": 0, "annotations": []}] * 2)
    with pytest.raises(ValueError, match="2 boxes, 1 scores"):
        coco_evaluate([{"scores": [1.0], "labels": [0], "boxes": [[0, 0, 1, 1]] * 2}],
                      [{"image_id": 0, "annotations": []}])
