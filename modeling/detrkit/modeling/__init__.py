"""DETR-family models. Importing this package registers them with transformers' Auto classes, and marks them so
`save_pretrained` writes `auto_map` plus the code files (loadable with `trust_remote_code=True`)."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageSegmentation,
    AutoModelForObjectDetection,
    AutoModelForUniversalSegmentation,
)

from .backbone import Backbone
from .configuration_deformable_detr import DeformableDetrConfig
from .configuration_detr import DetrConfig
from .loss import SetCriterion, compute_set_loss
from .matcher import HungarianMatcher
from .modeling_detr import (
    DetrForObjectDetection,
    DetrModel,
    DetrModelOutput,
    DetrObjectDetectionOutput,
    DetrPreTrainedModel,
)
from .modeling_deformable_detr import (
    DeformableDetrForObjectDetection,
    DeformableDetrModel,
    DeformableDetrModelOutput,
    DeformableDetrObjectDetectionOutput,
    DeformableDetrPreTrainedModel,
)
from .modeling_detr_segmentation import (
    DeformableDetrForSegmentation,
    DeformableDetrSegmentationOutput,
    DetrForSegmentation,
    DetrSegmentationOutput,
)
from .presets import PRESETS, config_from_preset, register_preset


def _register(config_class, base_model, detection_model):
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, base_model, exist_ok=True)
    AutoModelForObjectDetection.register(config_class, detection_model, exist_ok=True)
    config_class.register_for_auto_class()
    base_model.register_for_auto_class("AutoModel")
    detection_model.register_for_auto_class("AutoModelForObjectDetection")


_register(DetrConfig, DetrModel, DetrForObjectDetection)
_register(DeformableDetrConfig, DeformableDetrModel, DeformableDetrForObjectDetection)


def _register_segmentation(config_class, segmentation_model):
    # as transformers registers its DetrForSegmentation; save_pretrained adds the universal entry to auto_map
    AutoModelForImageSegmentation.register(config_class, segmentation_model, exist_ok=True)
    AutoModelForUniversalSegmentation.register(config_class, segmentation_model, exist_ok=True)
    segmentation_model.register_for_auto_class("AutoModelForImageSegmentation")


_register_segmentation(DetrConfig, DetrForSegmentation)
_register_segmentation(DeformableDetrConfig, DeformableDetrForSegmentation)

__all__ = [
    "DeformableDetrConfig",
    "DeformableDetrForObjectDetection",
    "DeformableDetrModel",
    "DeformableDetrModelOutput",
    "DeformableDetrObjectDetectionOutput",
    "DeformableDetrPreTrainedModel",
    "DeformableDetrForSegmentation",
    "DeformableDetrSegmentationOutput",
    "DetrForSegmentation",
    "DetrSegmentationOutput",
    "Backbone",
    "DetrConfig",
    "DetrForObjectDetection",
    "DetrModel",
    "DetrModelOutput",
    "DetrObjectDetectionOutput",
    "DetrPreTrainedModel",
    "HungarianMatcher",
    "PRESETS",
    "SetCriterion",
    "compute_set_loss",
    "config_from_preset",
    "register_preset",
]
