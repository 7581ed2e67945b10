"""COCO evaluation of a detector over a data loader (any number of processes): what training runs every
`eval_every` epochs and at the end, and `detrkit evaluate` prints."""
from __future__ import annotations

import torch
from accelerate.utils import gather_object

from detrkit.metrics.coco_ap import coco_evaluate
from detrkit.progress import progress

TABLE_ROWS = (
    ("map", "AP     @[IoU=0.50:0.95 | area=   all | maxDets=100]"),
    ("map_50", "AP     @[IoU=0.50      | area=   all | maxDets=100]"),
    ("map_75", "AP     @[IoU=0.75      | area=   all | maxDets=100]"),
    ("map_small", "AP     @[IoU=0.50:0.95 | area= small | maxDets=100]"),
    ("map_medium", "AP     @[IoU=0.50:0.95 | area=medium | maxDets=100]"),
    ("map_large", "AP     @[IoU=0.50:0.95 | area= large | maxDets=100]"),
    ("mar_1", "AR     @[IoU=0.50:0.95 | area=   all | maxDets=  1]"),
    ("mar_10", "AR     @[IoU=0.50:0.95 | area=   all | maxDets= 10]"),
    ("mar_100", "AR     @[IoU=0.50:0.95 | area=   all | maxDets=100]"),
    ("mar_small", "AR     @[IoU=0.50:0.95 | area= small | maxDets=100]"),
    ("mar_medium", "AR     @[IoU=0.50:0.95 | area=medium | maxDets=100]"),
    ("mar_large", "AR     @[IoU=0.50:0.95 | area= large | maxDets=100]"),
)


def format_table(metrics: dict) -> str:
    """The COCO summary table, as pycocotools prints it."""
    return "\n".join(f" {label} = {metrics[key]:.3f}" for key, label in TABLE_ROWS if key in metrics)


@torch.no_grad()
def predict(model, loader, processor, accelerator=None, desc: str = "evaluating") -> dict[int, dict]:
    """image_id -> {"scores", "labels", "boxes" (x0, y0, x1, y1) in original pixels}, all kept (threshold 0),
    gathered from every process."""
    model.eval()
    results = {}
    main = accelerator is None or accelerator.is_local_main_process
    for batch in progress(loader, desc, disable=not main, leave=False):
        outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch.get("pixel_mask"))
        sizes = torch.stack([t["orig_size"] for t in batch["labels"]]).to(outputs.pred_boxes.device)
        detections = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        for target, det in zip(batch["labels"], detections):
            results[int(target["image_id"])] = {k: v.float().cpu() for k, v in det.items()}
    if accelerator is not None and accelerator.num_processes > 1:
        merged = {}
        for part in gather_object([results]):  # accelerate pads the last batch by repeating images: dedupe
            merged.update(part)
        results = merged
    return results


def evaluate(model, loader, processor, data, accelerator=None) -> dict:
    """COCO metrics (map, map_50, map_75, map_small/medium/large, mar_*) of `model` on `data`'s eval split."""
    predictions = predict(model, loader, processor, accelerator)
    metrics = coco_metric(data.eval_records, predictions)
    model.train()
    return metrics


def coco_metric(records, predictions: dict[int, dict]) -> dict:
    """COCO metrics of `predictions` (image_id -> detections) against the records' own annotations."""
    missing = [r.image_id for r in records if r.image_id not in predictions]
    if missing:
        raise ValueError(f"no predictions for {len(missing)} evaluation image(s), e.g. image {missing[0]}")
    return coco_evaluate([predictions[r.image_id] for r in records], [r.target() for r in records], records.id2label)
