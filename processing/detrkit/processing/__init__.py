"""Image processors (preprocessing + post-processing) for the DETR family: what travels as Hub code.

Importing this package loads the processor side only (not the data layer, ``detrkit.data``, nor the metrics,
``detrkit.metrics``).
"""
from .image_processing_detr import DeformableDetrImageProcessor, DetrImageProcessor, DetrProcessingError
from .segmentation_annotations import SegmentationAnnotationError


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

__all__ = ["DetrImageProcessor", "DeformableDetrImageProcessor", "DetrProcessingError", "SegmentationAnnotationError"]
