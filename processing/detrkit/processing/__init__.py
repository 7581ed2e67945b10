"""Image processors (preprocessing + post-processing) for the DETR family."""
from .image_processing_detr import DeformableDetrImageProcessor, DetrImageProcessor, DetrProcessingError


def _register_auto_classes():
    """AutoImageProcessor for detrkit's configs, and auto_map + code in whatever save_pretrained writes.

    The configs live in detrkit.modeling; importing them here (not in the processor file) keeps the processor
    file free of modeling imports, so it travels alone as Hub remote code.
    """
    from transformers import AutoImageProcessor

    DetrImageProcessor.register_for_auto_class("AutoImageProcessor")
    DeformableDetrImageProcessor.register_for_auto_class("AutoImageProcessor")
    try:
        from detrkit import modeling
    except ImportError:  # modeling unavailable: processors still work, just not through AutoImageProcessor
        return
    for config_name, processor in (("DetrConfig", DetrImageProcessor),
                                   ("DeformableDetrConfig", DeformableDetrImageProcessor)):
        config = getattr(modeling, config_name, None)
        if config is not None:
            # Both backend keys: transformers would otherwise fill "pil" with its own DETR processor.
            AutoImageProcessor.register(config, image_processor_classes={"torchvision": processor, "pil": processor},
                                        exist_ok=True)


_register_auto_classes()

__all__ = ["DetrImageProcessor", "DeformableDetrImageProcessor", "DetrProcessingError"]

# --- data side of training: loaders, validation, augmentations, batching, built-in data, COCO metric ---
from .augmentations import AugmentationConfig, RandomSizeCrop, augment, detr_train_transforms
from .collator import DetectionCollator
from .detection_data import (
    Categories, DetectionData, DetectionRecord, InvalidDatasetError, Problem, load_coco, load_detection_data,
    load_hf_dataset, load_imagefolder,
)
from .detection_dataset import DetectionDataset, SkippedImages
from .data_layouts import SplitNotFoundError, discover_splits
from .record_table import RecordTable
from .voc import load_voc
from .yolo import load_yolo
from .synthetic_shapes import BUILTIN_DATASETS, BuiltinDataset, builtin_categories, write_builtin_dataset
# --- panoptic / instance segmentation data and metric ---
from .coco_panoptic import (
    InvalidPanopticDataError, PanopticData, PanopticDataset, horizontal_flip, load_coco_panoptic, load_hf_panoptic,
    semantic_map_to_panoptic,
)
from .panoptic_metric import PanopticQuality, panoptic_prediction, pq_compute
from .panoptic_shapes import BUILTIN_PANOPTIC_DATASETS, BuiltinPanopticDataset, write_builtin_panoptic_dataset
from .segmentation_annotations import SegmentationAnnotationError

_METRIC_EXPORTS = ("CocoDetectionMetric", "CocoEvaluator", "coco_evaluate")


def __getattr__(name):
    # The metric imports evaluate + datasets (about a second); load it on first use only.
    if name in _METRIC_EXPORTS:
        from . import coco_metric
        return getattr(coco_metric, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ += [
    "AugmentationConfig", "RandomSizeCrop", "augment", "detr_train_transforms", "DetectionCollator", "Categories",
    "DetectionData", "DetectionRecord", "InvalidDatasetError", "Problem", "load_coco", "load_detection_data",
    "load_hf_dataset", "load_imagefolder", "load_voc", "load_yolo", "discover_splits", "SplitNotFoundError",
    "RecordTable", "DetectionDataset", "SkippedImages", "BUILTIN_DATASETS", "BuiltinDataset",
    "builtin_categories", "write_builtin_dataset", *_METRIC_EXPORTS,
    "InvalidPanopticDataError", "PanopticData", "PanopticDataset", "horizontal_flip", "load_coco_panoptic",
    "load_hf_panoptic",
    "semantic_map_to_panoptic", "PanopticQuality",
    "panoptic_prediction", "pq_compute", "BUILTIN_PANOPTIC_DATASETS", "BuiltinPanopticDataset",
    "write_builtin_panoptic_dataset", "SegmentationAnnotationError",
]
