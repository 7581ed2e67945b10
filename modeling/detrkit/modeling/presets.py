"""Named configurations, so a user writes one name: `config_from_preset("detr-resnet-50-dc5", num_labels=20)`.

Presets describe architectures and training-time settings of the papers (COCO's 91 category ids, auxiliary
decoding losses); weights are never implied. Other model families add entries with `register_preset`.
"""

from dataclasses import dataclass, field

from .deformable_convolution import DCN_STAGES  # noqa: F401  (registers the *_dcn backbones with timm)
from .configuration_deformable_detr import DeformableDetrConfig
from .configuration_detr import DetrConfig


@dataclass(frozen=True)
class Preset:
    config_class: type
    kwargs: dict = field(default_factory=dict)
    description: str = ""


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, config_class: type, description: str = "", **kwargs):
    if name in PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    PRESETS[name] = Preset(config_class, kwargs, description)


def config_from_preset(name: str, **overrides):
    """The preset's config with `overrides` applied (any config field, e.g. num_labels, id2label,
    use_pretrained_backbone=True for ImageNet backbone weights)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[name]
    kwargs = {**preset.kwargs, **overrides}
    if "id2label" in overrides and "num_labels" not in overrides:
        kwargs.pop("num_labels", None)  # the label map decides
    return preset.config_class(**kwargs)


_COCO = dict(num_labels=91, auxiliary_loss=True)  # COCO category ids 0..90, as the paper's class head
register_preset("detr-resnet-50", DetrConfig, "DETR R50, 42.0 AP (500 ep.)", backbone="resnet50", **_COCO)
register_preset("detr-resnet-50-dc5", DetrConfig, "DETR R50-DC5, 43.3 AP", backbone="resnet50", dilation=True, **_COCO)
register_preset("detr-resnet-101", DetrConfig, "DETR R101, 43.5 AP", backbone="resnet101", **_COCO)
register_preset(
    "detr-resnet-101-dc5", DetrConfig, "DETR R101-DC5, 44.9 AP", backbone="resnet101", dilation=True, **_COCO
)

# Deformable DETR R50, 50 epochs (COCO val AP as the official repository reports); its focal class cost and
# loss weight are 2 (transformers' defaults, 1, are kept by the bare config for checkpoint compatibility)
_DEFORMABLE = [
    ("deformable-detr", "Deformable DETR R50, 44.5 AP", {}),
    ("deformable-detr-single-scale", "single-scale Deformable DETR R50, 39.4 AP", dict(num_feature_levels=1)),
    ("deformable-detr-single-scale-dc5", "single-scale Deformable DETR R50-DC5, 41.5 AP",
     dict(num_feature_levels=1, dilation=True)),
    ("deformable-detr-box-refine", "Deformable DETR R50 + iterative box refinement, 46.2 AP",
     dict(with_box_refine=True)),
    ("deformable-detr-two-stage", "Deformable DETR R50 ++ two-stage, 46.9 AP",
     dict(with_box_refine=True, two_stage=True)),
]
for _name, _description, _kwargs in _DEFORMABLE:
    register_preset(_name, DeformableDetrConfig, _description, backbone="resnet50", class_cost=2,
                    class_loss_coefficient=2, **_COCO, **_kwargs)

# The paper's strongest configuration: ResNeXt-101 (64x4d) with DCNv2 3x3 convolutions in C3-C5
# (deformable_convolution.py), two-stage + iterative box refinement.
register_preset(
    "deformable-detr-resnext101-dcn", DeformableDetrConfig,
    "Deformable DETR ResNeXt-101-DCN ++ two-stage (the paper's strongest backbone; APs 34.4 in the project's note)",
    backbone="resnext101_64x4d_dcn", class_cost=2, class_loss_coefficient=2, with_box_refine=True, two_stage=True,
    **_COCO,
)
