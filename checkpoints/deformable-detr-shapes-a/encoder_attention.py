"""The encoder self-attention of DETR, chosen by `config.encoder_attention_type`, so approximate attentions drop
into a trained DETR: an entry takes the config and returns a module with MultiheadAttention's parameter names and
call signature."""

from collections.abc import Callable

from torch import nn

from .adaptive_clustering_attention import from_config as adaptive_clustering_attention
from .multihead_attention import MultiheadAttention

ENCODER_SELF_ATTENTIONS: dict[str, Callable[..., nn.Module]] = {
    "standard": lambda config: MultiheadAttention(
        config.d_model, config.encoder_attention_heads, config.attention_dropout
    ),
    "act": adaptive_clustering_attention,  # ACT, Zheng et al. 2021
}


def build_encoder_self_attention(config) -> nn.Module:
    try:
        factory = ENCODER_SELF_ATTENTIONS[config.encoder_attention_type]
    except KeyError:
        raise ValueError(
            f"unknown encoder_attention_type {config.encoder_attention_type!r}; "
            f"known: {sorted(ENCODER_SELF_ATTENTIONS)}"
        ) from None
    return factory(config)
