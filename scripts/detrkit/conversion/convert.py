"""Official checkpoint -> detrkit model -> save_pretrained folder (weights, config, processor, model card)."""

from pathlib import Path

from detrkit import modeling
from detrkit.processing import DeformableDetrImageProcessor, DetrImageProcessor

from .checkpoint_file import CheckpointError, OfficialCheckpoint, load_official_checkpoint
from .key_mapping import check_complete, check_tied_copies, rename_state_dict
from .official_card import write_official_model_card
from .official_deformable_detr import deformable_config_kwargs, deformable_rules, tied_copies
from .official_detr import (
    detector_part,
    detr_config_kwargs,
    detr_panoptic_rules,
    detr_rules,
    resolve_detr_dilation,
)


def checkpoint_family(state_dict) -> str:
    """"deformable_detr", "detr" or "detr_panoptic" from the keys only one family has."""
    if any(k.startswith(("detr.", "bbox_attention.", "mask_head.")) for k in state_dict):
        return "detr_panoptic"
    if any(".sampling_offsets." in k for k in state_dict):
        return "deformable_detr"
    if "transformer.encoder.layers.0.self_attn.in_proj_weight" in state_dict:
        return "detr"
    raise CheckpointError("the transformer keys match neither DETR (packed in_proj attention) nor Deformable DETR "
                          "(sampling_offsets)")


def build_converted_model(checkpoint: OfficialCheckpoint, dilation: bool | None = None):
    """(detrkit model in eval mode holding the checkpoint's weights, notes on what decided DC5)."""
    family = checkpoint_family(checkpoint.state_dict)
    if family == "detr_panoptic":
        dilation, dc5_source = resolve_detr_dilation(checkpoint, dilation)
        config = modeling.DetrConfig(**detr_config_kwargs(detector_part(checkpoint), dilation))
        model_class, rules, ties = modeling.DetrForSegmentation, detr_panoptic_rules(), []
    elif family == "detr":
        dilation, dc5_source = resolve_detr_dilation(checkpoint, dilation)
        config = modeling.DetrConfig(**detr_config_kwargs(checkpoint, dilation))
        model_class, rules, ties = modeling.DetrForObjectDetection, detr_rules(), []
    else:
        config = modeling.DeformableDetrConfig(**deformable_config_kwargs(checkpoint, dilation))
        dc5_source = "the checkpoint's args.dilation"
        model_class, rules = modeling.DeformableDetrForObjectDetection, deformable_rules()
        ties = tied_copies(checkpoint.state_dict)
    check_tied_copies(checkpoint.state_dict, ties)
    weights = rename_state_dict(checkpoint.state_dict, rules)
    with modeling.backbone.no_pretrained_backbone_download():
        model = model_class(config)
    check_complete(weights, model)
    model.load_state_dict(weights, strict=True)
    # loading the tied pairs one after another leaves the last copy in both; they are equal (checked above)
    return model.eval(), dc5_source


def image_processor_for(model):
    """The official evaluation's preprocessing: shortest edge 800, longest 1333, ImageNet mean/std."""
    if isinstance(model, modeling.DetrForSegmentation):
        return DetrImageProcessor(format="coco_panoptic")
    if isinstance(model, modeling.DeformableDetrForObjectDetection):
        return DeformableDetrImageProcessor()
    return DetrImageProcessor()


def convert_official_checkpoint(source: str, output_dir: str | Path, dilation: bool | None = None):
    """Convert `source` (path or URL of an official .pth) into a save_pretrained folder `output_dir`; returns the
    model. `dilation` (DC5): required for DETR files that neither name it nor carry args."""
    checkpoint = load_official_checkpoint(source)
    model, dc5_source = build_converted_model(checkpoint, dilation)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_official_model_card(model, output_dir, checkpoint.file_name, dc5_source)
    model.save_pretrained(output_dir)
    image_processor_for(model).save_pretrained(output_dir)
    return model


__all__ = ["convert_official_checkpoint", "build_converted_model", "checkpoint_family", "CheckpointError"]
