"""Panoptic quality (PQ = SQ x RQ; Kirillov et al., 2019), computed as panopticapi's `pq_compute` does.

Per image, ground truth and prediction are id maps plus `segments_info` ({"id", "category_id", "iscrowd"}):
- a (ground truth, prediction) pair of the same category matches when IoU > 0.5, where the union leaves out the
  prediction's pixels on VOID (id 0) ground truth; crowd ground truth never matches;
- unmatched ground truth is a false negative unless crowd;
- an unmatched prediction is a false positive unless more than half of it lies on VOID or on the crowd region
  of its own category;
- ground-truth areas are those of `segments_info` (panopticapi reads them from the JSON; computed from the map
  when absent), prediction areas are counted on the map.
Counts and IoU sums add up over images, per category; PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP,
RQ = TP / (TP + FP/2 + FN/2), averaged over the categories with any TP, FP or FN ("All", "Things", "Stuff").
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
import torch

from detrkit.processing.segmentation_annotations import SegmentationAnnotationError, read_panoptic_map

VOID = 0
OFFSET = 256 * 256 * 256  # ids are below 256^3 (three 8-bit channels), so gt * OFFSET + pred is a unique pair key

__all__ = ["PanopticQuality", "panoptic_quality", "pq_compute", "panoptic_prediction"]


class PanopticQuality:
    """Accumulates per-category TP / FP / FN / IoU over images; `compute()` gives PQ, SQ, RQ.

    categories: COCO panoptic categories [{"id", "isthing", "name"?}, ...] (`isthing` 1 for things, 0 for stuff).
    """

    def __init__(self, categories: list[dict]):
        self.categories = {int(c["id"]): c for c in categories}
        missing = [c for c in categories if "isthing" not in c]
        if missing:
            raise ValueError(f"category {missing[0]!r} has no 'isthing' (1 for things, 0 for stuff)")
        self.stats = defaultdict(lambda: np.zeros(4))  # category -> [iou sum, tp, fp, fn]
        self.num_images = 0

    def update(self, gt_map, gt_segments: list[dict], pred_map, pred_segments: list[dict], image_id=None) -> None:
        """Add one image. Maps: (H, W) integer ids, (H, W, 3) RGB (panopticapi encoding), PIL images or PNG paths."""
        where = f"image {image_id if image_id is not None else self.num_images}"
        gt = read_panoptic_map(_numpy(gt_map), where + " (ground truth)")
        pred = read_panoptic_map(_numpy(pred_map), where + " (prediction)")
        if gt.shape != pred.shape:
            raise SegmentationAnnotationError(
                f"{where}: ground truth map {gt.shape} and prediction {pred.shape} differ"
            )
        for category, values in image_statistics(gt, gt_segments, pred, pred_segments, self.categories,
                                                 where).items():
            self.stats[category] += values
        self.num_images += 1

    def compute(self) -> dict:
        """{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category id: {"pq", "sq", "rq"}}}.

        n counts the categories averaged (those with a TP, FP or FN); with n = 0 the averages are 0.0."""
        per_class, results = {}, {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            totals, n = np.zeros(3), 0
            for category, info in self.categories.items():
                if isthing is not None and (int(info["isthing"]) == 1) != isthing:
                    continue
                iou, tp, fp, fn = self.stats[category] if category in self.stats else np.zeros(4)
                if tp + fp + fn == 0:
                    per_class[category] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                    continue
                n += 1
                scores = np.array([iou / (tp + 0.5 * fp + 0.5 * fn), iou / tp if tp else 0.0,
                                   tp / (tp + 0.5 * fp + 0.5 * fn)])
                per_class[category] = dict(zip(("pq", "sq", "rq"), scores.tolist()))
                totals += scores
            averages = totals / n if n else totals
            results[name] = {"pq": float(averages[0]), "sq": float(averages[1]), "rq": float(averages[2]), "n": n}
        results["per_class"] = per_class
        return results


def image_statistics(gt: np.ndarray, gt_segments, pred: np.ndarray, pred_segments, categories: dict,
                     where: str) -> dict[int, np.ndarray]:
    """One image's per-category [iou sum, tp, fp, fn] (see the module docstring for the rules)."""
    gt_info = {int(s["id"]): s for s in gt_segments}
    pred_info = {int(s["id"]): s for s in pred_segments}
    pred_area = check_prediction(pred, pred_info, categories, where)
    gt_ids, gt_counts = np.unique(gt, return_counts=True)
    gt_pixels = dict(zip(gt_ids.tolist(), gt_counts.tolist()))
    gt_area = {i: float(s["area"]) if "area" in s else gt_pixels.get(i, 0) for i, s in gt_info.items()}
    if gt.max(initial=0) >= OFFSET or pred.max(initial=0) >= OFFSET:
        raise SegmentationAnnotationError(f"{where}: segment ids must be below 256^3")

    pairs, counts = np.unique(gt.astype(np.uint64) * OFFSET + pred.astype(np.uint64), return_counts=True)
    intersection = {(int(p // OFFSET), int(p % OFFSET)): int(c) for p, c in zip(pairs, counts)}
    stats = defaultdict(lambda: np.zeros(4))
    gt_matched, pred_matched = set(), set()
    for (g, p), inter in intersection.items():
        if g not in gt_info or p not in pred_info or int(gt_info[g].get("iscrowd", 0)) == 1:
            continue
        category = int(gt_info[g]["category_id"])
        if category != int(pred_info[p]["category_id"]):
            continue
        union = pred_area[p] + gt_area[g] - inter - intersection.get((VOID, p), 0)
        iou = inter / union
        if iou > 0.5:
            stats[category] += (iou, 1, 0, 0)
            gt_matched.add(g)
            pred_matched.add(p)

    crowd_of_category = {}
    for g, info in gt_info.items():
        if g in gt_matched:
            continue
        if int(info.get("iscrowd", 0)) == 1:
            crowd_of_category[int(info["category_id"])] = g
            continue
        stats[int(info["category_id"])][3] += 1
    for p, info in pred_info.items():
        if p in pred_matched:
            continue
        category = int(info["category_id"])
        ignored = intersection.get((VOID, p), 0)
        if category in crowd_of_category:
            ignored += intersection.get((crowd_of_category[category], p), 0)
        if ignored / pred_area[p] > 0.5:
            continue
        stats[category][2] += 1
    return stats


def check_prediction(pred: np.ndarray, pred_info: dict, categories: dict, where: str) -> dict[int, int]:
    """Predicted segment areas, after panopticapi's checks: every id in the map is in segments_info and back,
    every category known."""
    ids, counts = np.unique(pred, return_counts=True)
    area = {}
    for segment_id, count in zip(ids.tolist(), counts.tolist()):
        if segment_id not in pred_info:
            if segment_id == VOID:
                continue
            raise SegmentationAnnotationError(
                f"{where}: predicted segment id {segment_id} is in the map but not in segments_info"
            )
        area[segment_id] = count
        if int(pred_info[segment_id]["category_id"]) not in categories:
            raise SegmentationAnnotationError(
                f"{where}: predicted segment id {segment_id} has unknown category_id "
                f"{pred_info[segment_id]['category_id']}"
            )
    missing = sorted(set(pred_info) - set(area))
    if missing:
        raise SegmentationAnnotationError(
            f"{where}: predicted segment ids {missing} are in segments_info but not in the map"
        )
    return area


def _numpy(value):
    return value.cpu().numpy() if isinstance(value, torch.Tensor) else value


def panoptic_prediction(result: dict, label_to_category=None) -> tuple[np.ndarray, list[dict]]:
    """A `post_process_panoptic_segmentation` result -> (id map (H, W) int64, segments_info with `category_id`).

    Fused queries listed several times under one id become one segment; an image without segments (a map of -1)
    becomes all VOID. label_to_category: dict or callable from the model's label ids to category ids (identity by
    default)."""
    segmentation = _numpy(result["segmentation"])
    ids = np.where(segmentation < 0, VOID, segmentation).astype(np.int64)
    if label_to_category is None:
        def to_category(label):
            return label
    else:
        to_category = label_to_category if callable(label_to_category) else label_to_category.__getitem__
    segments = {}
    for info in result["segments_info"]:
        segments.setdefault(int(info["id"]), {"id": int(info["id"]),
                                              "category_id": int(to_category(int(info["label_id"])))})
    present = set(np.unique(ids).tolist())
    return ids, [s for i, s in segments.items() if i in present]


def panoptic_quality(pairs, categories: list[dict]) -> dict:
    """PQ of (ground truth, prediction) pairs, each `{"segmentation": (H, W) ids, "segments_info"}`: ground-truth
    segments with `category_id` (and `iscrowd`, `area` optional), predicted ones with `category_id`."""
    metric = PanopticQuality(categories)
    for index, (gt, pred) in enumerate(pairs):
        metric.update(gt["segmentation"], gt["segments_info"], pred["segmentation"], pred["segments_info"],
                      image_id=gt.get("image_id", index))
    return metric.compute()


def pq_compute(gt_json_file, pred_json_file, gt_folder=None, pred_folder=None) -> dict:
    """panopticapi's file interface: COCO panoptic JSONs + PNG folders (default: the JSON's path without .json).
    Images are paired by image_id; every ground-truth image needs a prediction."""
    gt_json = _read_json(gt_json_file)
    pred_json = _read_json(pred_json_file)
    gt_folder = gt_folder or os.path.splitext(gt_json_file)[0]
    pred_folder = pred_folder or os.path.splitext(pred_json_file)[0]
    metric = PanopticQuality(gt_json["categories"])
    predictions = {a["image_id"]: a for a in pred_json["annotations"]}
    for gt_annotation in gt_json["annotations"]:
        image_id = gt_annotation["image_id"]
        if image_id not in predictions:
            raise SegmentationAnnotationError(f"image {image_id}: no prediction for this ground-truth image")
        pred_annotation = predictions[image_id]
        metric.update(os.path.join(gt_folder, gt_annotation["file_name"]), gt_annotation["segments_info"],
                      os.path.join(pred_folder, pred_annotation["file_name"]), pred_annotation["segments_info"],
                      image_id=image_id)
    return metric.compute()


def _read_json(path):
    with open(path) as f:
        return json.load(f)
