"""Evaluation of DETR's segmentation training: PQ / SQ / RQ (panoptic, by detrkit.metrics' panopticapi-equal metric
against the ground-truth PNGs; stuff classes fused) or COCO mask AP (instance)."""
from __future__ import annotations

import torch
from accelerate.utils import extract_model_from_parallel

from detrkit.progress import progress

from .segmentation_data import SegmentationData


@torch.no_grad()
def predict_segments(model, loader, processor, task: str, stuff: set[int], threshold: float, device) -> dict:
    """image_id -> the processor's panoptic / instance result at the original size: {"segmentation" (H, W) segment
    ids, "segments_info" [{"id", "label_id", "score", ...}]}."""
    model.eval()
    # The post-processing (transformers' rule) thresholds each query's mask probability weighted by its score.
    # DETR's softmax scores of kept queries are near 1; Deformable DETR's sigmoid focal scores stay far below,
    # so that a weighted probability of 0.5 may be out of reach: ask a query at the score threshold for 0.5.
    sigmoid_scores = bool(getattr(processor, "sigmoid_scores", False))
    mask_threshold = 0.5 * threshold if sigmoid_scores else 0.5
    results = {}
    for batch in progress(loader, "evaluating", leave=False):
        outputs = model(pixel_values=batch["pixel_values"].to(device), pixel_mask=batch["pixel_mask"].to(device))
        sizes = [tuple(int(v) for v in t["orig_size"]) for t in batch["labels"]]
        if task == "panoptic":
            maps = processor.post_process_panoptic_segmentation(outputs, threshold=threshold,
                                                                mask_threshold=mask_threshold,
                                                                label_ids_to_fuse=stuff, target_sizes=sizes)
        else:
            maps = processor.post_process_instance_segmentation(outputs, threshold=threshold,
                                                                mask_threshold=mask_threshold, target_sizes=sizes)
        for target, result in zip(batch["labels"], maps):
            results[int(target["image_id"])] = {"segmentation": torch.as_tensor(result["segmentation"]).cpu(),
                                                "segments_info": result["segments_info"]}
    return results


def panoptic_metrics(data: SegmentationData, predictions: dict) -> dict:
    """PQ / SQ / RQ (All, Things, Stuff, per class) by detrkit.metrics' panopticapi-equal metric, against the
    ground-truth PNGs themselves."""
    from detrkit.metrics.panoptic import PanopticQuality, panoptic_prediction

    metric = PanopticQuality(data.categories)
    for record in data.eval_records:
        pred_map, pred_segments = panoptic_prediction(predictions[record.image_id], data.label2category)
        metric.update(record.panoptic_png, record.segments_info, pred_map, pred_segments, image_id=record.image_id)
    result = metric.compute()
    names = {int(c["id"]): c["name"] for c in data.categories}
    groups = (("All", ""), ("Things", "_things"), ("Stuff", "_stuff"))
    summary = {key + suffix: result[group][key] for group, suffix in groups for key in ("pq", "sq", "rq")}
    return {**summary, "per_class": {names[c]: v for c, v in result["per_class"].items()}}


def mask_ap(data: SegmentationData, predictions: dict) -> dict:
    """COCO mask AP (pycocotools' COCOeval, iouType "segm") of the instance segments: AP, AP50, AP75 and AP by
    area as segm_map, segm_map_50, ..."""
    from detrkit.metrics.coco_ap import STAT_NAMES, coco_mask_evaluate

    stats = coco_mask_evaluate(data.eval_records, predictions, data.id2label)
    return {f"segm_{name}": stats[name] for name in STAT_NAMES[:6]}


class SegmentationEvaluation:
    """The segmentation task's evaluation (task.py): the metrics of the model's segments of the evaluation split;
    the segments themselves are kept in `predictions` (for the pictures)."""

    def __init__(self, data: SegmentationData, processor, task: str, threshold: float, device, loader):
        self.data, self.processor, self.task, self.threshold, self.device = data, processor, task, threshold, device
        self.loader = loader  # its own, not sharded by accelerate: the metrics need every image
        self.predictions = {}

    def __call__(self, model, prepared_loader=None) -> dict:
        model = extract_model_from_parallel(model)
        train_matched_masks_only = model.config.train_matched_masks_only
        model.config.train_matched_masks_only = False  # every query's mask: the post-processing reads them all
        try:
            self.predictions = predict_segments(model, self.loader, self.processor, self.task,
                                                self.data.stuff_label_ids, self.threshold, self.device)
        finally:
            model.config.train_matched_masks_only = train_matched_masks_only
        if self.task == "panoptic":
            return panoptic_metrics(self.data, self.predictions)
        return mask_ap(self.data, self.predictions)

    @property
    def headline(self) -> str:
        return "pq" if self.task == "panoptic" else "segm_map"

    @property
    def headline_name(self) -> str:
        return "PQ" if self.task == "panoptic" else "mask AP"

    def describe(self, metrics: dict) -> str:
        if self.task == "panoptic":
            return f"PQ {metrics['pq']:.4f} (things {metrics['pq_things']:.4f}, stuff {metrics['pq_stuff']:.4f})"
        return f"mask AP {metrics['segm_map']:.4f}"


__all__ = ["SegmentationEvaluation", "mask_ap", "panoptic_metrics", "predict_segments"]
