"""DETR configuration.

Field names follow transformers' `DetrConfig` wherever the two overlap, so a `config.json` written by
transformers (v4 or v5 layout) reads as-is. The backbone is always a timm CNN; the three ways transformers
spells it (`backbone` + `use_timm_backbone`, `backbone_kwargs`, a `timm_backbone` `backbone_config`) are folded
into `backbone`, `backbone_out_indices` and `dilation` here, once.
"""

from transformers import PreTrainedConfig

_DEFAULT_OUT_INDICES = [1, 2, 3, 4]  # C2..C5: every ResNet stage, so a mask head can use C2-C4
_POSITION_EMBEDDINGS = ("sine", "learned")


class DetrConfig(PreTrainedConfig):
    r"""
    Configuration of a detrkit DETR model. Defaults reproduce DETR R50 (Carion et al., 2020): ResNet-50,
    d_model 256, 8 heads, 6 encoder + 6 decoder layers, FFN 2048, 100 object queries.

    Backbone:
        backbone (`str`): any timm CNN name that supports `features_only` (e.g. "resnet50", "resnet101").
        use_pretrained_backbone (`bool`): load timm's ImageNet weights when the model is built from a config
            (never when loading a checkpoint, whose weights replace them anyway).
        dilation (`bool`): DC5 — dilate the last stage instead of striding it (output stride 16).
        backbone_out_indices (`list[int]`): timm feature indices returned by the backbone; the last one feeds
            the transformer.
        freeze_backbone_batch_norm (`bool`): replace BatchNorm by frozen BatchNorm (fixed statistics and affine),
            as the paper does; batches of 2-4 images make batch statistics useless.
        backbone_trainable_stages (`int`): how many of the returned stages, counted from the deepest, train.
            The default 3 freezes the stem and C2 (layer1) as the paper does; 0 freezes the whole backbone.
    Transformer:
        d_model, encoder_layers, decoder_layers, encoder_attention_heads, decoder_attention_heads,
        encoder_ffn_dim, decoder_ffn_dim, dropout, attention_dropout, activation_dropout, activation_function,
        num_queries, position_embedding_type ("sine" | "learned") as in transformers.
        normalize_before (`bool`): pre-norm layers (the paper uses post-norm).
        encoder_attention_type (`str`): name of the encoder self-attention in
            `detr_transformer.ENCODER_SELF_ATTENTIONS`: "standard", or "act" (adaptive clustering attention,
            `adaptive_clustering_attention.py`), which a trained DETR takes without retraining.
        act_hash_rounds (`int`): ACT's E2LSH rounds L (the official README recommends 32, 24, 20 or 16; fewer
            rounds, fewer and larger clusters).
        act_bucket_width (`float`): ACT's E2LSH bucket width r (the official code's 8).
        act_seed (`int`): seed of ACT's hash projections, so the same image gives the same detections.
        recompute_activations (`bool`): in training, keep less for backward and recompute what is cheap: each
            feed-forward block keeps its input only and recomputes its ReLU output (4x wider; `feed_forward.py`),
            layer norms keep their output instead of their input (CPU; `layer_norm.py`), and projections of
            query + position keep the two terms, not their sum (`linear_of_sum.py`). For Deformable DETR R50 at
            800x1066: 0.7 GiB fewer activations for about 5% more CPU time. Off: the plain modules.
    Loss (transformers' names): auxiliary_loss, class_cost, bbox_cost, giou_cost, bbox_loss_coefficient,
        giou_loss_coefficient, eos_coefficient (weight of the "no object" class), mask/dice coefficients.
    """

    model_type = "detrkit_detr"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

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
    normalize_before: bool = False
    encoder_attention_type: str = "standard"
    act_hash_rounds: int = 24
    act_bucket_width: float = 8.0
    act_seed: int = 0
    recompute_activations: bool = True
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

    def __post_init__(self, **kwargs):
        # a transformers config.json says "detr"; the class attribute, not the file, names this config
        kwargs.pop("model_type", None)
        self._resolve_backbone()
        if self.position_embedding_type not in _POSITION_EMBEDDINGS:
            raise ValueError(
                f"position_embedding_type must be one of {_POSITION_EMBEDDINGS}, got {self.position_embedding_type!r}"
            )
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, name):
                raise ValueError(f"d_model ({self.d_model}) must be divisible by {name} ({getattr(self, name)})")
        if self.d_model % 2:
            raise ValueError(f"d_model must be even (half of it encodes y, half x), got {self.d_model}")
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be positive, got {self.num_queries}")
        super().__post_init__(**kwargs)

    def _resolve_backbone(self):
        """Fold transformers' backbone spellings into `backbone`, `backbone_out_indices`, `dilation`."""
        spec = self.backbone_config
        if spec is not None and not isinstance(spec, dict):
            spec = spec.to_dict()  # a transformers TimmBackboneConfig object
        if spec is not None:
            if spec.get("model_type", "timm_backbone") != "timm_backbone":
                raise ValueError(
                    f"backbone_config has model_type {spec.get('model_type')!r}; detrkit builds its backbone with "
                    "timm only (model_type 'timm_backbone', or set `backbone` to a timm model name)"
                )
            self.backbone = self.backbone or spec.get("backbone")
            self.backbone_out_indices = self.backbone_out_indices or spec.get("out_indices")
            self.num_channels = spec.get("num_channels", self.num_channels)
            self.dilation = bool(self.dilation) or spec.get("output_stride") == 16
            self.backbone_config = None
        if not self.use_timm_backbone:
            raise ValueError("use_timm_backbone=False (transformers' own ResNet) is not supported; detrkit uses timm")
        kwargs = dict(self.backbone_kwargs or {})
        self.backbone_out_indices = list(self.backbone_out_indices or kwargs.pop("out_indices", _DEFAULT_OUT_INDICES))
        self.num_channels = kwargs.pop("in_chans", kwargs.pop("num_channels", self.num_channels))
        if kwargs.pop("output_stride", None) == 16:
            self.dilation = True
        self.backbone_kwargs = kwargs or None  # anything left goes to timm.create_model untouched
        self.backbone = self.backbone or "resnet50"
        self.dilation = bool(self.dilation)
        if not 0 <= self.backbone_trainable_stages <= len(self.backbone_out_indices):
            raise ValueError(
                f"backbone_trainable_stages must be in [0, {len(self.backbone_out_indices)}] (the number of returned "
                f"stages), got {self.backbone_trainable_stages}"
            )


__all__ = ["DetrConfig"]
