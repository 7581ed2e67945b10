"""facebookresearch/detr checkpoints -> DetrConfig + detrkit state dict.

Everything but the backbone's dilation (DC5) is in the state dict: ResNet depth, d_model, layer counts, FFN
width, queries, classes, pre-norm, learned positions. Attention heads and the loss settings come from the file's
`args` when it has them, else from the official main.py defaults, which every released file was trained with.
"""

import re

from .checkpoint_file import CheckpointError, OfficialCheckpoint
from .coco_labels import (
    NUM_COCO_SLOTS,
    NUM_PANOPTIC_SLOTS,
    coco_detection_id2label,
    coco_panoptic_id2label,
    coco_panoptic_stuff_ids,
)
from .key_mapping import layer_rules
from .resnet_layout import resnet_name

# the released files: detr-r50-e632da11.pth, detr-r50-dc5-f0fb7ef5.pth, detr-r101-dc5-a2e86def.pth, ...
OFFICIAL_FILE_NAME = re.compile(r"^detr-r(50|101)(-dc5)?(-panoptic)?-[0-9a-f]{8}\.pth$")

_RULES = [
    (r"^backbone\.0\.body\.(.+)$", r"model.backbone.conv_encoder.model.\1"),
    (r"^backbone\.1\.row_embed\.weight$", "model.position_embedding.row_embeddings.weight"),
    (r"^backbone\.1\.col_embed\.weight$", "model.position_embedding.column_embeddings.weight"),
    (r"^input_proj\.(weight|bias)$", r"model.input_projection.\1"),
    (r"^query_embed\.weight$", "model.query_position_embeddings.weight"),
    *layer_rules("transformer.encoder", "model.encoder", {
        "self_attn": "self_attn", "linear1": "fc1", "linear2": "fc2",
        "norm1": "self_attn_layer_norm", "norm2": "final_layer_norm",
    }),
    *layer_rules("transformer.decoder", "model.decoder", {
        "self_attn": "self_attn", "multihead_attn": "encoder_attn", "linear1": "fc1", "linear2": "fc2",
        "norm1": "self_attn_layer_norm", "norm2": "encoder_attn_layer_norm", "norm3": "final_layer_norm",
    }),
    (r"^transformer\.encoder\.norm\.(weight|bias)$", r"model.encoder.layernorm.\1"),
    (r"^transformer\.decoder\.norm\.(weight|bias)$", r"model.decoder.layernorm.\1"),
    (r"^class_embed\.(weight|bias)$", r"class_labels_classifier.\1"),
    (r"^bbox_embed\.layers\.(\d+)\.(weight|bias)$", r"bbox_predictor.layers.\1.\2"),
]


def detr_rules() -> list[tuple[str, str]]:
    return list(_RULES)


def detr_panoptic_rules() -> list[tuple[str, str]]:
    """Panoptic files (models/segmentation.py's DETRsegm) hold the detector under `detr.` plus the attention map
    and mask head, whose names detrkit's DetrForSegmentation shares."""
    return ([(r"^detr\." + pattern.lstrip("^"), "detr." + replacement) for pattern, replacement in _RULES]
            + [(r"^(bbox_attention|mask_head)\.(.+)$", r"\1.\2")])


def detector_part(checkpoint: OfficialCheckpoint) -> OfficialCheckpoint:
    """A panoptic file's detector (`detr.*` keys, prefix dropped) as a checkpoint of its own."""
    state_dict = {k[len("detr."):]: v for k, v in checkpoint.state_dict.items() if k.startswith("detr.")}
    return OfficialCheckpoint(state_dict, checkpoint.args, checkpoint.file_name)


def _count_layers(state_dict, prefix: str) -> int:
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(rf"^{re.escape(prefix)}\.layers\.(\d+)\.", k))}
    return max(indices) + 1 if indices else 0


def resolve_detr_dilation(checkpoint: OfficialCheckpoint, dilation: bool | None) -> tuple[bool, str]:
    """DC5 cannot be read from DETR's weights (dilation changes no shape): the flag, the file's `args`, or an
    official file name decide, in that order; a disagreement or no evidence at all is an error."""
    args_dilation = getattr(checkpoint.args, "dilation", None)
    name = OFFICIAL_FILE_NAME.match(checkpoint.file_name)
    evidence = [(source, value) for source, value in (
        ("the --dc5/--no-dc5 flag", dilation),
        ("the checkpoint's args.dilation", args_dilation),
        (f"the official file name {checkpoint.file_name!r}", bool(name.group(2)) if name else None),
    ) if value is not None]
    if not evidence:
        raise CheckpointError(
            "a DETR checkpoint does not record whether its backbone is dilated (DC5): pass --dc5 or --no-dc5 "
            "(the official files say it in their names, detr-r50-dc5-*.pth; this one is named "
            f"{checkpoint.file_name!r} and has no args)")
    if len({bool(value) for _, value in evidence}) > 1:
        raise CheckpointError("conflicting DC5 evidence: " + ", ".join(f"{s} says {bool(v)}" for s, v in evidence))
    source, value = evidence[0]
    return bool(value), source


def detr_config_kwargs(checkpoint: OfficialCheckpoint, dilation: bool) -> dict:
    """DetrConfig fields for the official checkpoint."""
    sd, args = checkpoint.state_dict, checkpoint.args
    arg = lambda name, default: getattr(args, name, default) if args is not None else default  # noqa: E731
    encoder_layers = _count_layers(sd, "transformer.encoder")
    decoder_layers = _count_layers(sd, "transformer.decoder")
    if not encoder_layers or not decoder_layers:
        raise CheckpointError(f"{checkpoint.file_name}: found {encoder_layers} encoder and {decoder_layers} decoder "
                              "layers; a DETR checkpoint has both")
    d_model = sd["input_proj.weight"].shape[0]
    num_labels = sd["class_embed.weight"].shape[0] - 1  # the last slot is "no object"
    kwargs = dict(
        backbone=resnet_name(sd),
        dilation=dilation,
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_ffn_dim=sd["transformer.encoder.layers.0.linear1.weight"].shape[0],
        decoder_ffn_dim=sd["transformer.decoder.layers.0.linear1.weight"].shape[0],
        encoder_attention_heads=arg("nheads", 8),
        decoder_attention_heads=arg("nheads", 8),
        num_queries=sd["query_embed.weight"].shape[0],
        normalize_before="transformer.encoder.norm.weight" in sd,
        position_embedding_type="learned" if "backbone.1.row_embed.weight" in sd else "sine",
        dropout=arg("dropout", 0.1),
        backbone_trainable_stages=3 if arg("lr_backbone", 1e-5) > 0 else 0,
        # the official training: auxiliary decoding losses unless --no_aux_loss, and its matcher / loss weights
        auxiliary_loss=arg("aux_loss", True),
        class_cost=arg("set_cost_class", 1), bbox_cost=arg("set_cost_bbox", 5), giou_cost=arg("set_cost_giou", 2),
        bbox_loss_coefficient=arg("bbox_loss_coef", 5), giou_loss_coefficient=arg("giou_loss_coef", 2),
        eos_coefficient=arg("eos_coef", 0.1),
        mask_loss_coefficient=arg("mask_loss_coef", 1), dice_loss_coefficient=arg("dice_loss_coef", 1),
    )
    if arg("position_embedding", kwargs["position_embedding_type"]) != kwargs["position_embedding_type"]:
        raise CheckpointError(f"args.position_embedding is {args.position_embedding!r} but the weights say "
                              f"{kwargs['position_embedding_type']!r}")
    if num_labels == NUM_COCO_SLOTS:
        kwargs["id2label"] = coco_detection_id2label()
    elif num_labels == NUM_PANOPTIC_SLOTS:
        kwargs["id2label"] = coco_panoptic_id2label()
        kwargs["label_ids_to_fuse"] = coco_panoptic_stuff_ids()  # stuff: one segment per class
    else:
        kwargs["num_labels"] = num_labels
    return kwargs
