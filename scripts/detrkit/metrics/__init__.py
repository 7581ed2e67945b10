"""detrkit.metrics: what a model's predictions score against the ground truth.

coco_ap.py   COCO box mAP (pycocotools' COCOeval; also an `evaluate` metric module, loadable by its path alone)
             and mask AP of instance segmentation
panoptic.py  panoptic quality (PQ = SQ x RQ), computed as panopticapi's pq_compute does

The COCO metric imports evaluate + datasets (about a second): its names load on first use only.
"""
from .panoptic import PanopticQuality, panoptic_prediction, panoptic_quality, pq_compute

_COCO_EXPORTS = ("STAT_NAMES", "CocoDetectionMetric", "CocoEvaluator", "coco_evaluate", "coco_mask_evaluate")


def __getattr__(name):
    if name in _COCO_EXPORTS:
        from . import coco_ap
        return getattr(coco_ap, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PanopticQuality", "panoptic_prediction", "panoptic_quality", "pq_compute", *_COCO_EXPORTS]
