"""DETR configuration: the shared DETR-family fields (`configuration_detr_base.py`) plus DETR's own."""

from .configuration_detr_base import DetrBaseConfig


class DetrConfig(DetrBaseConfig):
    r"""
    Configuration of a detrkit DETR model. Defaults reproduce DETR R50 (Carion et al., 2020): ResNet-50,
    d_model 256, 8 heads, 6 encoder + 6 decoder layers, FFN 2048, 100 object queries. The backbone returns
    C2-C5 (strides 4-32; C5 feeds the transformer, C2-C4 a mask head) and trains C3-C5.

    See `DetrBaseConfig` for the backbone, transformer and loss fields. DETR's own:
        normalize_before (`bool`): pre-norm layers (the paper uses post-norm).
        encoder_attention_type (`str`): name of the encoder self-attention in
            `detr_transformer.ENCODER_SELF_ATTENTIONS`: "standard", or "act" (adaptive clustering attention,
            `adaptive_clustering_attention.py`), which a trained DETR takes without retraining.
        act_hash_rounds (`int`): ACT's E2LSH rounds L (the official README recommends 32, 24, 20 or 16; fewer
            rounds, fewer and larger clusters).
        act_bucket_width (`float`): ACT's E2LSH bucket width r (the official code's 8).
        act_seed (`int`): seed of ACT's hash projections, so the same image gives the same detections.
    Denoising defaults are DN-DETR's (no negatives, labels flipped with probability 0.2): DETR's softmax loss
    learns only from the positive denoising queries.
    """

    model_type = "detrkit_detr"
    backbone_strides = (4, 8, 16, 32)

    normalize_before: bool = False
    encoder_attention_type: str = "standard"
    act_hash_rounds: int = 24
    act_bucket_width: float = 8.0
    act_seed: int = 0
    label_noise_ratio: float = 0.2
    contrastive_denoising: bool = False


__all__ = ["DetrConfig"]
