"""Deformable DETR configuration: the shared DETR-family fields (`configuration_detr_base.py`) plus the fields
of transformers' `DeformableDetrConfig`, under their names, so its `config.json` reads as-is."""

from transformers.utils import logging

from .configuration_detr_base import DetrBaseConfig

logger = logging.get_logger(__name__)


class DeformableDetrConfig(DetrBaseConfig):
    r"""
    Configuration of a detrkit Deformable DETR model. Defaults reproduce Deformable DETR R50 (Zhu et al., 2021):
    4 feature levels (C3-C5 + one stride-2 conv on C5), 4 sampling points per head and level, 6+6 layers with
    FFN 1024, 300 queries, sigmoid focal classification.

    See `DetrBaseConfig` for the backbone, transformer and loss fields. The backbone returns C3-C5 (strides 8,
    16, 32); a single-scale model uses only the last of them, so the same stages train as in the multi-scale one.

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
        max_position_embeddings: read for compatibility; the sine position encoding has no maximum.
        eos_coefficient: read for compatibility; a value other than transformers' 0.1 is warned about (the focal
            loss has no "no object" class).
        return_intermediate: must stay True: the per-layer heads read every decoder layer's output.

    Faster training (training only unless said; see also the denoising and one-to-many fields of
    `DetrBaseConfig`):
        look_forward_twice (`bool`): DINO: each layer's box loss also reaches the previous layer's box head
            through its (undetached) reference box. Same outputs; box refinement only.
        mixed_query_selection (`bool`): DINO, two-stage only: the queries take their positions from the top-k
            proposals and their content from learned embeddings (`query_content_embeddings`), not from the
            proposals. This changes the architecture: such a model loads through detrkit's code only.
        classification_loss (`str`): "focal" (the paper) or "varifocal" (VarifocalNet's IoU-aware loss, as
            RT-DETR trains).
    """

    model_type = "detrkit_deformable_detr"
    backbone_strides = (8, 16, 32)
    # transformers writes [4] for a single-scale model; C3-C5 cost nothing more and keep the same stages
    # training as in the multi-scale model
    reads_transformers_out_indices = False

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
    look_forward_twice: bool = False
    mixed_query_selection: bool = False
    classification_loss: str = "focal"
    # transformers' checkpoints tie the per-layer heads (all to layer 0 without box refinement, as the paper
    # shares them); keeping their default keeps their files loading with identical outputs.
    tie_word_embeddings: bool = True

    def _check(self):
        super()._check()
        if self.num_feature_levels < 1:
            raise ValueError(f"num_feature_levels must be at least 1, got {self.num_feature_levels}")
        if self.two_stage and not self.with_box_refine:
            raise ValueError("two_stage=True requires with_box_refine=True (as in the paper)")
        if not self.return_intermediate:
            raise ValueError("return_intermediate=False is not supported: Deformable DETR's per-layer heads and "
                             "box refinement read every decoder layer's output")
        # DETR-only fields a config may still carry
        if getattr(self, "normalize_before", False):
            raise ValueError("normalize_before=True (pre-norm) is not supported by Deformable DETR, which is post-norm")
        if getattr(self, "encoder_attention_type", "standard") != "standard":
            raise ValueError(f"encoder_attention_type {self.encoder_attention_type!r} does not apply: Deformable "
                             "DETR's encoder uses multi-scale deformable attention")
        if self.eos_coefficient != 0.1:
            logger.warning(f"eos_coefficient={self.eos_coefficient} has no effect: Deformable DETR's sigmoid focal "
                           "loss has no \"no object\" class to weight")
        if self.mixed_query_selection and not self.two_stage:
            raise ValueError("mixed_query_selection=True needs two_stage=True: it mixes the encoder's proposals "
                             "(positions) with learned content queries")
        if self.classification_loss not in ("focal", "varifocal"):
            raise ValueError(f"classification_loss must be 'focal' or 'varifocal', got {self.classification_loss!r}")
        for name in ("encoder_n_points", "decoder_n_points", "two_stage_num_proposals"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


__all__ = ["DeformableDetrConfig"]
