"""Deformable DETR configuration.

A DetrConfig (same backbone, transformer and loss fields, same folding of transformers' backbone spellings)
plus the fields of transformers' `DeformableDetrConfig`, under their names, so its `config.json` reads as-is.
"""

from .configuration_detr import DetrConfig

_MULTI_SCALE_OUT_INDICES = [2, 3, 4]  # C3-C5 (strides 8, 16, 32) of a timm ResNet


class DeformableDetrConfig(DetrConfig):
    r"""
    Configuration of a detrkit Deformable DETR model. Defaults reproduce Deformable DETR R50 (Zhu et al., 2021):
    4 feature levels (C3-C5 + one stride-2 conv on C5), 4 sampling points per head and level, 6+6 layers with
    FFN 1024, 300 queries, sigmoid focal classification.

    Every DetrConfig field applies (backbone, d_model, layers, heads, dropout, costs, loss coefficients). The
    backbone returns C3-C5 by default (`backbone_out_indices` [2, 3, 4]); a single-scale model uses only the
    last of them, so the same stages train as in the multi-scale model.

    Deformable DETR fields (transformers' names):
        num_feature_levels (`int`): L, feature levels attended to; 1 is the single-scale variant. Levels beyond
            the backbone's are made by stride-2 3x3 convolutions.
        encoder_n_points, decoder_n_points (`int`): P, sampling points per head and level.
        with_box_refine (`bool`): iterative bounding box refinement; every decoder layer refines the previous
            layer's boxes with its own prediction heads.
        two_stage (`bool`): the encoder proposes boxes (a detection head on every pixel), the top
            `two_stage_num_proposals` seed the decoder's queries and reference points. Requires with_box_refine.
        focal_alpha (`float`): alpha of the sigmoid focal loss (gamma is 2, as the paper).
        class_loss_coefficient (`float`): weight of the focal classification loss (transformers fixes it at 1;
            the paper's presets use 2, with class_cost 2).
        disable_custom_kernels (`bool`): always use the pure-PyTorch attention op (e.g. for ONNX export).
    """

    model_type = "detrkit_deformable_detr"

    num_queries: int = 300
    encoder_ffn_dim: int = 1024
    decoder_ffn_dim: int = 1024
    max_position_embeddings: int = 1024
    return_intermediate: bool = True
    num_feature_levels: int = 4
    encoder_n_points: int = 4
    decoder_n_points: int = 4
    with_box_refine: bool = False
    two_stage: bool = False
    two_stage_num_proposals: int = 300
    focal_alpha: float = 0.25
    class_loss_coefficient: float = 1.0
    disable_custom_kernels: bool = False
    # transformers' checkpoints tie the per-layer heads (all to layer 0 without box refinement, as the paper
    # shares them); keeping their default keeps their files loading with identical outputs.
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # Our own default wins over a transformers config's [4] (single scale): the extra returned stages
        # cost nothing and keep C3-C4 trainable as in the paper.
        if self.backbone_out_indices is None:
            self.backbone_out_indices = list(_MULTI_SCALE_OUT_INDICES)
        if self.num_feature_levels < 1:
            raise ValueError(f"num_feature_levels must be at least 1, got {self.num_feature_levels}")
        if self.normalize_before:
            raise ValueError("normalize_before=True (pre-norm) is not supported by Deformable DETR, which is post-norm")
        if self.encoder_attention_type != "standard":
            raise ValueError(f"encoder_attention_type {self.encoder_attention_type!r} does not apply: Deformable "
                             "DETR's encoder uses multi-scale deformable attention")
        if self.two_stage and not self.with_box_refine:
            raise ValueError("two_stage=True requires with_box_refine=True (as in the paper)")
        for name in ("encoder_n_points", "decoder_n_points", "two_stage_num_proposals"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        super().__post_init__(**kwargs)


__all__ = ["DeformableDetrConfig"]
