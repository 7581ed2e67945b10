"""COCO box mAP with pycocotools' COCOeval underneath: an ``evaluate`` metric and a plain accumulator.

Predictions are what ``post_process_object_detection`` returns per image: ``{"scores", "labels", "boxes"}`` with
boxes (x0, y0, x1, y1) in absolute pixels of the original image. References (ground truth) are either

* COCO-style: ``{"image_id", "annotations": [{"bbox": [x, y, w, h], "category_id", "area"?, "iscrowd"?}]}``, or
* the processor's labels: ``{"image_id", "class_labels", "boxes" (normalized cx, cy, w, h), "orig_size" (h, w),
  "size"?, "area"?}``, as the collator hands them to the training loop.

Labels and ``category_id`` are in the same (contiguous) label space. The numbers are COCOeval's own ``stats``
(so -1 where an area range has no ground truth), computed from exactly these inputs. This file imports no
other detrkit file, so ``evaluate.load("path/to/coco_ap.py")`` can copy it alone.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any

import datasets
import evaluate
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["CocoDetectionMetric", "CocoEvaluator", "coco_evaluate", "coco_mask_evaluate", "instance_segments_to_coco",
           "run_cocoeval",
           "STAT_NAMES"]

# The order of COCOeval.stats for iouType="bbox".
STAT_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")


def _as_list(value) -> list:
    """Tensors/arrays/sequences -> nested python lists (floats stay float64: no rounding before COCOeval)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    return np.asarray(value).tolist()


def _ground_truth(reference: dict, index: int) -> tuple[int, list[dict]]:
    """(image_id, COCO annotations) from a COCO-style reference or a processor label dict."""
    image_id = reference.get("image_id", index)
    image_id = int(np.asarray(_as_list(image_id)).reshape(-1)[0])
    if "annotations" in reference:
        annotations = []
        for k, ann in enumerate(reference["annotations"]):
            if "bbox" not in ann or "category_id" not in ann:
                raise ValueError(f"reference of image {image_id}, annotation {k}: needs 'bbox' and 'category_id'")
            x, y, w, h = (float(v) for v in _as_list(ann["bbox"]))
            annotations.append({"bbox": [x, y, w, h], "category_id": int(ann["category_id"]),
                                "area": float(ann["area"]) if ann.get("area") is not None else w * h,
                                "iscrowd": int(ann.get("iscrowd") or 0)})
        return image_id, annotations
    if "class_labels" not in reference or "boxes" not in reference or "orig_size" not in reference:
        raise ValueError(f"reference of image {image_id}: expected COCO-style {{'image_id', 'annotations'}} or "
                         f"processor labels with 'class_labels', 'boxes', 'orig_size'; got {sorted(reference)}")
    height, width = (float(v) for v in _as_list(reference["orig_size"]))
    boxes = np.asarray(_as_list(reference["boxes"]), dtype=np.float64).reshape(-1, 4)  # normalized cx, cy, w, h
    w, h = boxes[:, 2] * width, boxes[:, 3] * height
    x, y = boxes[:, 0] * width - w / 2, boxes[:, 1] * height - h / 2
    areas = w * h
    if reference.get("area") is not None:
        areas = np.asarray(_as_list(reference["area"]), dtype=np.float64).reshape(-1)
        if reference.get("size") is not None:  # the processor scales area with the resize; undo it
            size_h, size_w = (float(v) for v in _as_list(reference["size"]))
            areas = areas * (height * width) / (size_h * size_w)
    labels = np.asarray(_as_list(reference["class_labels"])).reshape(-1)
    crowd = np.asarray(_as_list(reference.get("iscrowd", np.zeros(len(labels))))).reshape(-1)
    return image_id, [{"bbox": [x[i], y[i], w[i], h[i]], "category_id": int(labels[i]), "area": float(areas[i]),
                       "iscrowd": int(crowd[i])} for i in range(len(labels))]


def _detections(prediction: dict, image_id: int) -> list[dict]:
    boxes = np.asarray(_as_list(prediction["boxes"]), dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(_as_list(prediction["scores"]), dtype=np.float64).reshape(-1)
    labels = np.asarray(_as_list(prediction["labels"])).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"prediction for image {image_id}: {len(boxes)} boxes, {len(scores)} scores, "
                         f"{len(labels)} labels; they must match")
    return [{"image_id": image_id, "category_id": int(label), "score": float(score),
             "bbox": [x0, y0, x1 - x0, y1 - y0]} for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels)]


def coco_evaluate(predictions: list[dict], references: list[dict], id2label: dict[int, str] | None = None,
                  per_class: bool = False) -> dict[str, Any]:
    """COCO box metrics of ``predictions`` against ``references`` (aligned lists, one entry per image).

    ``id2label`` names the categories; without it they are the labels seen in references and predictions.
    With ``per_class``, adds ``map_per_class`` and ``mar_100_per_class`` ({name: value}, -1 without ground truth).
    """
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    images, gt_annotations, detections = [], [], []
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        image_id, annotations = _ground_truth(reference, index)
        if images and image_id in {img["id"] for img in images}:
            raise ValueError(f"image id {image_id} appears twice in the references")
        images.append({"id": image_id})
        gt_annotations += [dict(a, image_id=image_id, id=len(gt_annotations) + k + 1) for k, a in
                           enumerate(annotations)]
        detections += _detections(prediction, image_id)
    if id2label is None:
        seen = {a["category_id"] for a in gt_annotations} | {d["category_id"] for d in detections}
        id2label = {i: str(i) for i in sorted(seen)}
    categories = [{"id": int(i), "name": str(name)} for i, name in sorted(id2label.items())]

    coco_eval = run_cocoeval(images, gt_annotations, detections, categories, "bbox")
    results = {name: float(value) for name, value in zip(STAT_NAMES, coco_eval.stats)}
    if per_class:
        results.update(_per_class(coco_eval, categories))
    return results


def run_cocoeval(images: list[dict], annotations: list[dict], detections: list[dict], categories: list[dict],
                 iou_type: str) -> COCOeval:
    """COCOeval (evaluate, accumulate, summarize) of COCO results against in-memory ground truth, quietly."""
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the table
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes(detections)
        else:  # loadRes cannot take an empty list; an empty result set scores 0 wherever there is ground truth
            coco_dt = COCO()
            coco_dt.dataset = {"images": images, "annotations": [], "categories": categories}
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def _per_class(coco_eval: COCOeval, categories: list[dict]) -> dict[str, dict[str, float]]:
    """AP (IoU .50:.95, all areas, 100 detections) and AR@100 per category, averaged as COCOeval's summarize."""
    precision = coco_eval.eval["precision"]  # (iou thresholds, recall thresholds, categories, areas, max dets)
    recall = coco_eval.eval["recall"]  # (iou thresholds, categories, areas, max dets)
    ap, ar = {}, {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        name = next(c["name"] for c in categories if c["id"] == cat_id)
        p, r = precision[:, :, k, 0, -1], recall[:, k, 0, -1]
        ap[name] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
        ar[name] = float(r[r > -1].mean()) if (r > -1).any() else -1.0
    return {"map_per_class": ap, "mar_100_per_class": ar}


class CocoEvaluator:
    """Accumulates predictions and references batch by batch (for a training loop), then runs COCOeval once.

        evaluator = CocoEvaluator(model.config.id2label)
        for batch in loader:
            results = processor.post_process_object_detection(model(...), 0.0, target_sizes=orig_sizes)
            evaluator.update(results, batch["labels"])
        metrics = evaluator.compute()
    """

    def __init__(self, id2label: dict[int, str] | None = None, per_class: bool = False):
        self.id2label = {int(k): v for k, v in id2label.items()} if id2label is not None else None
        self.per_class = per_class
        self.reset()

    def reset(self) -> None:
        self.predictions, self.references = [], []

    def update(self, predictions: list[dict], references: list[dict]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
        # Store as python numbers right away: no tensors (or GPU memory) held across the whole evaluation.
        self.predictions += [{k: _as_list(p[k]) for k in ("scores", "labels", "boxes")} for p in predictions]
        self.references += [{k: _as_list(v) if k != "annotations" else v for k, v in r.items()} for r in references]

    def compute(self) -> dict[str, Any]:
        return coco_evaluate(self.predictions, self.references, self.id2label, self.per_class)


_PREDICTION = {"scores": datasets.List(datasets.Value("float64")), "labels": datasets.List(datasets.Value("int64")),
               "boxes": datasets.List(datasets.List(datasets.Value("float64"), length=4))}
_COCO_REFERENCE = {
    "image_id": datasets.Value("int64"),
    "annotations": datasets.List({"bbox": datasets.List(datasets.Value("float64"), length=4),
                                  "category_id": datasets.Value("int64"), "area": datasets.Value("float64"),
                                  "iscrowd": datasets.Value("int64")}),
}
_LABELS_REFERENCE = {
    "image_id": datasets.List(datasets.Value("int64")), "class_labels": datasets.List(datasets.Value("int64")),
    "boxes": datasets.List(datasets.List(datasets.Value("float64"), length=4)),
    "orig_size": datasets.List(datasets.Value("int64")), "size": datasets.List(datasets.Value("int64")),
    "area": datasets.List(datasets.Value("float64")), "iscrowd": datasets.List(datasets.Value("int64")),
}


class CocoDetectionMetric(evaluate.Metric):
    """COCO box mAP as an ``evaluate`` metric: ``evaluate.load("scripts/detrkit/metrics/coco_ap.py")`` or use directly.

    ``compute(predictions=..., references=..., id2label=None, per_class=False)`` returns map, map_50, map_75,
    map_small, map_medium, map_large, mar_1, mar_10, mar_100, mar_small, mar_medium, mar_large.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="COCO object detection mAP/mAR (pycocotools COCOeval, bbox).",
            citation="Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014.",
            inputs_description=__doc__,
            features=[datasets.Features({"predictions": _PREDICTION, "references": _COCO_REFERENCE}),
                      datasets.Features({"predictions": _PREDICTION, "references": _LABELS_REFERENCE})],
            reference_urls=["https://github.com/cocodataset/cocoapi"],
        )

    def _infer_feature_from_batch(self, batch):
        # Pick the reference layout by its keys; evaluate's own trial encoding accepts either for both.
        coco_style = len(batch["references"]) > 0 and "annotations" in batch["references"][0]
        return self.info.features[0 if coco_style else 1]

    def _compute(self, predictions, references, id2label: dict | None = None, per_class: bool = False):
        if id2label is not None:
            id2label = {int(k): v for k, v in id2label.items()}
        references = [{k: v for k, v in r.items() if v is not None} for r in references]
        return coco_evaluate(predictions, references, id2label, per_class)


# ------------------------------------------------------------------------------------------------ mask AP


def instance_segments_to_coco(image_id: int, result: dict) -> list[dict]:
    """A `post_process_instance_segmentation` result (segment-id map at the original size + segments_info with
    label_id and score) -> COCO results, one compressed-RLE mask per segment, category = label_id."""
    from pycocotools import mask as mask_utils

    segmentation = np.asarray(_as_list(result["segmentation"]))
    detections = []
    for segment in result["segments_info"]:
        mask = np.asfortranarray((segmentation == segment["id"]).astype(np.uint8))
        if not mask.any():
            continue
        detections.append({"image_id": int(image_id), "category_id": int(segment["label_id"]),
                           "segmentation": mask_utils.encode(mask), "score": float(segment["score"])})
    return detections


def coco_mask_evaluate(records, predictions: dict, id2label: dict[int, str]) -> dict[str, float]:
    """COCO mask AP (COCOeval, iouType "segm") of instance predictions.

    records: objects with `image_id`, `width`, `height` and COCO `annotations` in label space (`category_id`,
    `segmentation` as polygons or RLE, `bbox`, `area`?, `iscrowd`?), e.g. detrkit's DetectionRecords.
    predictions: image_id -> a `post_process_instance_segmentation` result at the original size.
    Returns COCOeval's 12 stats under STAT_NAMES (-1 where an area range has no ground truth).
    """
    images, gt_annotations, detections = [], [], []
    for record in records:
        if record.image_id not in predictions:
            raise ValueError(f"image {record.image_id}: no prediction")
        images.append({"id": int(record.image_id), "width": int(record.width), "height": int(record.height)})
        for k, ann in enumerate(record.annotations):
            if "segmentation" not in ann:
                raise ValueError(f"image {record.image_id}, annotation {k}: no 'segmentation' for mask AP")
            x, y, w, h = (float(v) for v in _as_list(ann["bbox"]))
            gt_annotations.append({"id": len(gt_annotations) + 1, "image_id": int(record.image_id),
                                   "category_id": int(ann["category_id"]), "segmentation": ann["segmentation"],
                                   "bbox": [x, y, w, h], "area": float(ann.get("area") or w * h),
                                   "iscrowd": int(ann.get("iscrowd") or 0)})
        detections += instance_segments_to_coco(record.image_id, predictions[record.image_id])
    categories = [{"id": int(i), "name": str(name)} for i, name in sorted(id2label.items())]
    coco_eval = run_cocoeval(images, gt_annotations, detections, categories, "segm")
    return {name: float(value) for name, value in zip(STAT_NAMES, coco_eval.stats)}
