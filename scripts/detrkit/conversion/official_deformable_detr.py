"""fundamentalvision/Deformable-DETR checkpoints -> DeformableDetrConfig + detrkit state dict.

The variant is read from the weights: feature levels from `level_embed`, how many of them come from the
backbone from the 1x1 input projections, iterative box refinement from the decoder's own box heads
(`transformer.decoder.bbox_embed.*`, registered only then), two-stage from the proposal layers
(`transformer.enc_output`). Heads, points, queries of a two-stage model and DC5 are not all in the weights, so
these files must carry the `args` the official main.py saves with every checkpoint, and args and weights must
agree.
"""

import math
import re

from .checkpoint_file import CheckpointError, OfficialCheckpoint
from .coco_labels import NUM_COCO_SLOTS, coco_detection_id2label
from .key_mapping import layer_rules
from .resnet_layout import resnet_name

_RULES = [
    (r"^backbone\.0\.body\.(.+)$", r"model.backbone.conv_encoder.model.\1"),
    (r"^backbone\.1\.row_embed\.weight$", "model.position_embedding.row_embeddings.weight"),
    (r"^backbone\.1\.col_embed\.weight$", "model.position_embedding.column_embeddings.weight"),
    (r"^transformer\.level_embed$", "model.level_embed"),
    (r"^input_proj\.(.+)$", r"model.input_proj.\1"),
    (r"^query_embed\.weight$", "model.query_position_embeddings.weight"),
    (r"^transformer\.(reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.(weight|bias)$",
     r"model.\1.\2"),
    *layer_rules("transformer.encoder", "model.encoder", {
        "self_attn": "self_attn", "linear1": "fc1", "linear2": "fc2",
        "norm1": "self_attn_layer_norm", "norm2": "final_layer_norm",
    }),
    *layer_rules("transformer.decoder", "model.decoder", {
        "cross_attn": "encoder_attn", "self_attn": "self_attn", "linear1": "fc1", "linear2": "fc2",
        "norm1": "encoder_attn_layer_norm", "norm2": "self_attn_layer_norm", "norm3": "final_layer_norm",
    }),
    (r"^transformer\.decoder\.(bbox_embed|class_embed)\.(.+)$", r"model.decoder.\1.\2"),
    (r"^(class_embed|bbox_embed)\.(\d+)\.(.+)$", r"\1.\2.\3"),
]


def deformable_rules() -> list[tuple[str, str]]:
    return list(_RULES)


def tied_copies(state_dict) -> list[tuple[str, str]]:
    """(copy, original) pairs: the decoder's heads in box refinement / two-stage are the model's heads."""
    return [(k, k[len("transformer.decoder."):]) for k in state_dict
            if k.startswith(("transformer.decoder.bbox_embed.", "transformer.decoder.class_embed."))]


def _count(state_dict, pattern: str) -> int:
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def _require_args(checkpoint: OfficialCheckpoint):
    if checkpoint.args is None:
        raise CheckpointError(
            f"{checkpoint.file_name}: a Deformable DETR checkpoint without 'args'. The official main.py saves them "
            "with every checkpoint; heads, sampling points, DC5 and a two-stage model's query count are not all "
            "readable from the weights, so they are needed")
    needed = ["nheads", "enc_n_points", "dec_n_points", "num_queries", "dilation", "with_box_refine", "two_stage",
              "num_feature_levels"]
    missing = [name for name in needed if not hasattr(checkpoint.args, name)]
    if missing:
        raise CheckpointError(f"{checkpoint.file_name}: its args lack {missing}: not a Deformable DETR main.py file")
    return checkpoint.args


def deformable_config_kwargs(checkpoint: OfficialCheckpoint, dilation: bool | None) -> dict:
    """DeformableDetrConfig fields for the official checkpoint (its args checked against its weights)."""
    sd = checkpoint.state_dict
    args = _require_args(checkpoint)
    if dilation is not None and dilation != bool(args.dilation):
        raise CheckpointError(f"--{'' if dilation else 'no-'}dc5 contradicts the checkpoint's args.dilation "
                              f"({args.dilation})")
    num_feature_levels, d_model = sd["transformer.level_embed"].shape
    backbone_levels = sum(1 for k in sd if re.match(r"^input_proj\.\d+\.0\.weight$", k) and sd[k].shape[-1] == 1)
    with_box_refine = any(k.startswith("transformer.decoder.bbox_embed.") for k in sd)
    two_stage = "transformer.enc_output.weight" in sd
    decoder_layers = _count(sd, r"^transformer\.decoder\.layers\.(\d+)\.")
    heads = args.nheads
    if backbone_levels != min(num_feature_levels, 3):
        raise CheckpointError(f"{backbone_levels} backbone projections for {num_feature_levels} levels; the official "
                              "model projects C3-C5 (multi-scale) or C5 (single-scale)")
    found = dict(num_feature_levels=num_feature_levels, with_box_refine=with_box_refine, two_stage=two_stage,
                 dec_layers=decoder_layers, hidden_dim=d_model)
    for name, value in found.items():
        if hasattr(args, name) and getattr(args, name) != value:
            raise CheckpointError(f"args.{name} is {getattr(args, name)!r} but the weights say {value!r}")
    for side, points in (("encoder", args.enc_n_points), ("decoder", args.dec_n_points)):
        attn = "self_attn" if side == "encoder" else "cross_attn"
        outputs = sd[f"transformer.{side}.layers.0.{attn}.attention_weights.weight"].shape[0]
        if outputs != heads * num_feature_levels * points:
            raise CheckpointError(f"the {side}'s attention weights have {outputs} outputs, not nheads x levels x "
                                  f"points = {heads} x {num_feature_levels} x {points}")
    if not math.isclose(getattr(args, "position_embedding_scale", 2 * math.pi), 2 * math.pi):
        raise CheckpointError(f"args.position_embedding_scale is {args.position_embedding_scale}; detrkit's sine "
                              "encoding uses the official default 2*pi")
    num_labels = sd["class_embed.0.weight"].shape[0]
    kwargs = dict(
        backbone=resnet_name(sd),
        dilation=bool(args.dilation),
        backbone_out_indices=[2, 3, 4],  # C3-C5; a single-scale model reads C5 only, and C3-C4 train as officially
        d_model=d_model,
        encoder_layers=_count(sd, r"^transformer\.encoder\.layers\.(\d+)\."),
        decoder_layers=decoder_layers,
        encoder_ffn_dim=sd["transformer.encoder.layers.0.linear1.weight"].shape[0],
        decoder_ffn_dim=sd["transformer.decoder.layers.0.linear1.weight"].shape[0],
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_n_points=args.enc_n_points,
        decoder_n_points=args.dec_n_points,
        num_feature_levels=num_feature_levels,
        num_queries=args.num_queries,
        two_stage_num_proposals=args.num_queries,
        with_box_refine=with_box_refine,
        two_stage=two_stage,
        position_embedding_type="learned" if "backbone.1.row_embed.weight" in sd else "sine",
        dropout=getattr(args, "dropout", 0.1),
        backbone_trainable_stages=3 if getattr(args, "lr_backbone", 2e-5) > 0 else 0,  # layer2-4 train officially
        auxiliary_loss=getattr(args, "aux_loss", True),
        class_cost=getattr(args, "set_cost_class", 2), bbox_cost=getattr(args, "set_cost_bbox", 5),
        giou_cost=getattr(args, "set_cost_giou", 2), class_loss_coefficient=getattr(args, "cls_loss_coef", 2),
        bbox_loss_coefficient=getattr(args, "bbox_loss_coef", 5),
        giou_loss_coefficient=getattr(args, "giou_loss_coef", 2), focal_alpha=getattr(args, "focal_alpha", 0.25),
        mask_loss_coefficient=getattr(args, "mask_loss_coef", 1),
        dice_loss_coefficient=getattr(args, "dice_loss_coef", 1),
    )
    if "query_embed.weight" in sd and sd["query_embed.weight"].shape[0] != args.num_queries:
        raise CheckpointError(f"args.num_queries is {args.num_queries} but query_embed has "
                              f"{sd['query_embed.weight'].shape[0]} rows")
    if num_labels == NUM_COCO_SLOTS:
        kwargs["id2label"] = coco_detection_id2label()
    else:
        kwargs["num_labels"] = num_labels
    return kwargs
