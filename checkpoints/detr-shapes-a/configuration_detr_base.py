"""The configuration fields DETR and Deformable DETR share: backbone, transformer sizes, set-loss costs and weights.

Field names follow transformers' `DetrConfig` / `DeformableDetrConfig`, so their `config.json` files read as-is.
The backbone is always a timm model; the three ways transformers spells it (`backbone` + `use_timm_backbone`,
`backbone_kwargs`, a `timm_backbone` `backbone_config`) are folded into `backbone`, `backbone_out_indices` and
`dilation` here, once. Each model's config declares its own fields on top of these.
"""

from transformers import PreTrainedConfig

_POSITION_EMBEDDINGS = ("sine", "learned")
# Fields earlier detrkit versions wrote that are no longer model options (the memory savers moved to training:
# `detrkit.training.memory_savers`); their saved configs still load.
_RETIRED_FIELDS = ("recompute_activations",)


class DetrBaseConfig(PreTrainedConfig):
    r"""
    Backbone:
        backbone (`str`): a timm model name that supports `features_only`: CNNs (resnet50, resnext, regnet,
            efficientnet, mobilenetv3, convnext, ...) and hierarchical transformers (swin).
        use_pretrained_backbone (`bool`): load timm's ImageNet weights when the model is built from a config
            (never when loading a checkpoint, whose weights replace them anyway).
        dilation (`bool`): DC5 - dilate the last stage instead of striding it (output stride 16); families that
            cannot dilate (swin) are rejected with an error.
        backbone_out_indices (`list[int] | None`): timm feature indices the backbone returns. None (default)
            picks them from timm's `feature_info` by stride: each model's `backbone_strides`.
        freeze_backbone_batch_norm (`bool`): BatchNorm with fixed statistics and affine, as the papers do
            (batches of 2-4 images make batch statistics useless). LayerNorm has no batch statistics and stays.
        backbone_trainable_stages (`int`): how many returned stages, counted from the deepest, train; everything
            timm builds before them is frozen. 0 freezes the whole backbone.
    Transformer (transformers' names): d_model, encoder_layers, decoder_layers, encoder_attention_heads,
        decoder_attention_heads, encoder_ffn_dim, decoder_ffn_dim, dropout, attention_dropout, activation_dropout,
        activation_function, num_queries, position_embedding_type ("sine" | "learned"), init_std, init_xavier_std.
        encoder_layerdrop, decoder_layerdrop (`float`): LayerDrop (Fan et al., 2019): in training each layer is
            skipped with this probability.
    Loss (transformers' names): auxiliary_loss, class_cost, bbox_cost, giou_cost, bbox_loss_coefficient,
        giou_loss_coefficient, eos_coefficient, mask_loss_coefficient and dice_loss_coefficient (used by a mask
        head only).
    Denoising training (DN-DETR, Li et al. 2022; DINO, Zhang et al. 2023; RT-DETR's names). Training only: the
    extra queries and their parameters never reach inference, export or a saved checkpoint.
        num_denoising (`int`): positive denoising queries per image (DINO's dn_number); the ground truth is noised
            in max(1, num_denoising // most boxes of an image in the batch) groups. 0 turns denoising off.
        denoising_groups (`int`): a fixed number of groups instead (DN-DETR's "scalar"); 0 uses the budget above.
        label_noise_ratio (`float`): labels are flipped to a random class with probability label_noise_ratio / 2
            (contrastive, DINO's code) or label_noise_ratio (DN-DETR).
        box_noise_scale (`float`): boxes move by up to this fraction of their size: DINO's corners (negatives
            by 1-2x it), DN-DETR's centre (half the size) and size.
        contrastive_denoising (`bool`): DINO's negatives, noised further than the positives, which must predict
            "no object"; False is DN-DETR (positives only).
    One-to-many supervision (H-DETR's hybrid matching, Jia et al. 2023), training only as well:
        num_queries_one_to_many (`int`): this many extra learned queries, hidden from the others by the
            self-attention mask, are matched to every target repeated `k_one_to_many` times; their loss is weighted
            by `lambda_one_to_many`. 0 turns it off.
    """

    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }
    # strides of the backbone stages a model reads when `backbone_out_indices` is None
    backbone_strides = (4, 8, 16, 32)  # C2-C5 (no annotation: not a saved field)
    # whether out_indices in transformers' backbone_kwargs / backbone_config choose the stages
    reads_transformers_out_indices = True

    # backbone
    backbone: str | None = None
    use_timm_backbone: bool = True
    use_pretrained_backbone: bool = False
    backbone_config: dict | None = None
    backbone_kwargs: dict | None = None
    backbone_out_indices: list[int] | None = None
    dilation: bool | None = False
    num_channels: int = 3
    freeze_backbone_batch_norm: bool = True
    backbone_trainable_stages: int = 3
    # transformer
    num_queries: int = 100
    encoder_layers: int = 6
    encoder_ffn_dim: int = 2048
    encoder_attention_heads: int = 8
    decoder_layers: int = 6
    decoder_ffn_dim: int = 2048
    decoder_attention_heads: int = 8
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0
    is_encoder_decoder: bool = True
    activation_function: str = "relu"
    d_model: int = 256
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    position_embedding_type: str = "sine"
    init_std: float = 0.02
    init_xavier_std: float = 1.0
    # loss
    auxiliary_loss: bool = False
    class_cost: float = 1
    bbox_cost: float = 5
    giou_cost: float = 2
    mask_loss_coefficient: float = 1
    dice_loss_coefficient: float = 1
    bbox_loss_coefficient: float = 5
    giou_loss_coefficient: float = 2
    eos_coefficient: float = 0.1
    # denoising training
    num_denoising: int = 0
    denoising_groups: int = 0
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 0.4
    contrastive_denoising: bool = True
    # one-to-many supervision
    num_queries_one_to_many: int = 0
    k_one_to_many: int = 6
    lambda_one_to_many: float = 1.0

    @property
    def uses_denoising(self) -> bool:
        return self.num_denoising > 0 or self.denoising_groups > 0

    def __post_init__(self, **kwargs):
        # a transformers config.json says "detr"; the class attribute, not the file, names this config
        kwargs.pop("model_type", None)
        for name in _RETIRED_FIELDS:
            kwargs.pop(name, None)
        self._resolve_backbone()
        super().__post_init__(**kwargs)
        self._check()  # after the base class has set any extra fields a config.json carries

    def _check(self):
        if self.position_embedding_type not in _POSITION_EMBEDDINGS:
            raise ValueError(
                f"position_embedding_type must be one of {_POSITION_EMBEDDINGS}, got {self.position_embedding_type!r}"
            )
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, name):
                raise ValueError(f"d_model ({self.d_model}) must be divisible by {name} ({getattr(self, name)})")
        if self.d_model % 2:
            raise ValueError(f"d_model must be even (half of it encodes y, half x), got {self.d_model}")
        for name in ("num_queries", "encoder_layers", "decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("num_denoising", "denoising_groups", "label_noise_ratio", "box_noise_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.num_queries_one_to_many < 0 or self.k_one_to_many < 1:
            raise ValueError(f"num_queries_one_to_many must be >= 0 and k_one_to_many >= 1, got "
                             f"{self.num_queries_one_to_many} and {self.k_one_to_many}")
        for name in ("encoder_layerdrop", "decoder_layerdrop", "dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} is a probability in [0, 1), got {getattr(self, name)}")

    def _resolve_backbone(self):
        """Fold transformers' backbone spellings into `backbone`, `backbone_out_indices`, `dilation`."""
        spec, spelled_out_indices = self.backbone_config, None
        if spec is not None and not isinstance(spec, dict):
            spec = spec.to_dict()  # a transformers TimmBackboneConfig object
        if spec is not None:
            if spec.get("model_type", "timm_backbone") != "timm_backbone":
                raise ValueError(
                    f"backbone_config has model_type {spec.get('model_type')!r}; detrkit builds its backbone with "
                    "timm only (model_type 'timm_backbone', or set `backbone` to a timm model name)"
                )
            self.backbone = self.backbone or spec.get("backbone")
            spelled_out_indices = spec.get("out_indices")
            self.num_channels = spec.get("num_channels", self.num_channels)
            self.dilation = bool(self.dilation) or spec.get("output_stride") == 16
            self.backbone_config = None
        if not self.use_timm_backbone:
            raise ValueError("use_timm_backbone=False (transformers' own ResNet) is not supported; detrkit uses timm")
        kwargs = dict(self.backbone_kwargs or {})
        spelled_out_indices = kwargs.pop("out_indices", None) or spelled_out_indices
        if not self.reads_transformers_out_indices:
            spelled_out_indices = None
        out_indices = self.backbone_out_indices or spelled_out_indices
        self.backbone_out_indices = list(out_indices) if out_indices else None
        self.num_channels = kwargs.pop("in_chans", kwargs.pop("num_channels", self.num_channels))
        if kwargs.pop("output_stride", None) == 16:
            self.dilation = True
        self.backbone_kwargs = kwargs or None  # anything left goes to timm.create_model untouched
        self.backbone = self.backbone or "resnet50"
        self.dilation = bool(self.dilation)
        num_stages = len(self.backbone_out_indices or self.backbone_strides)
        if not 0 <= self.backbone_trainable_stages <= num_stages:
            raise ValueError(
                f"backbone_trainable_stages must be in [0, {num_stages}] (the number of returned stages), got "
                f"{self.backbone_trainable_stages}"
            )


__all__ = ["DetrBaseConfig"]
