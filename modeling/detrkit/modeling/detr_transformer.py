"""DETR's encoder-decoder transformer (paper section 3.2, figure 10).

Differences from the NLP Transformer, as in the paper: spatial position encodings are added to queries and keys
of every attention layer (never to values), object queries are learned positional encodings added at every
decoder layer, and the decoder returns every layer's output (through a shared LayerNorm) for auxiliary losses.

The encoder self-attention is built by a factory keyed by `config.encoder_attention_type`, so approximate
attentions (ACT's clustered attention) drop into a trained DETR: an entry takes the config and returns a module
with MultiheadAttention's parameter names and call signature.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer


class MultiheadAttention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention`; the explicit softmax path runs only when
    attention weights are requested.

    Parameter names (q_proj, k_proj, v_proj, out_proj) are those of transformers' DETR checkpoints.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, H, L, head_dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query (B, Lq, D), key/value (B, Lk, D), key_padding_mask (B, Lk) bool True on valid keys or None.
        Returns the output (B, Lq, D) and, if requested, the weights (B, H, Lq, Lk)."""
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        weights = None
        if output_attentions:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = scores.softmax(-1)
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.out_proj(out.transpose(1, 2).flatten(2)), weights


ENCODER_SELF_ATTENTIONS: dict[str, Callable[..., nn.Module]] = {
    "standard": lambda config: MultiheadAttention(
        config.d_model, config.encoder_attention_heads, config.attention_dropout
    ),
    "act": lambda config: _adaptive_clustering_attention(config),  # ACT, Zheng et al. 2021
}


def _adaptive_clustering_attention(config) -> nn.Module:
    from .adaptive_clustering_attention import from_config  # it imports this module, so not at the top

    return from_config(config)


def build_encoder_self_attention(config) -> nn.Module:
    try:
        factory = ENCODER_SELF_ATTENTIONS[config.encoder_attention_type]
    except KeyError:
        raise ValueError(
            f"unknown encoder_attention_type {config.encoder_attention_type!r}; "
            f"known: {sorted(ENCODER_SELF_ATTENTIONS)}"
        ) from None
    return factory(config)


def with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


def layer_dropped(stack: nn.Module, probability: float) -> bool:
    """LayerDrop (Fan et al., 2019): in training, skip a whole layer with this probability."""
    return stack.training and probability > 0 and bool(torch.rand([]) < probability)


class TransformerLayer(GradientCheckpointingLayer):
    """What every encoder and decoder layer of DETR and Deformable DETR has: the feed-forward block, the
    dropouts, the residual connections with their layer norms. Subclasses add their attentions.

    The feed-forward linears sit directly in the layer (not in a sub-module) so parameters are named
    `layers.N.fc1`, as in transformers' checkpoints. GradientCheckpointingLayer gives transformers'
    `activation_checkpointing_enable()`: tensors are passed to the layers positionally for it.
    """

    def __init__(self, config, ffn_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.activation = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.normalize_before = getattr(config, "normalize_before", False)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_dropout(self.activation(self.fc1(x))))

    def residual(self, x: torch.Tensor, sublayer, norm: nn.LayerNorm) -> torch.Tensor:
        """x + dropout(sublayer(...)), normalized after the sum (post-norm, the papers) or before the sublayer
        (pre-norm). `sublayer` takes the (normalized) input."""
        if self.normalize_before:
            return x + self.dropout(sublayer(norm(x)))
        return self.add_and_norm(x, sublayer(x), norm)

    def add_and_norm(self, x: torch.Tensor, sublayer_output: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """The post-norm residual: norm(x + dropout(sublayer output))."""
        return norm(x + self.dropout(sublayer_output))

    def feed_forward_sublayer(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x, self.feed_forward, self.final_layer_norm)


class EncoderLayer(TransformerLayer):
    """Self-attention over the image features (position added to queries and keys), then the FFN."""

    def __init__(self, config, self_attn: nn.Module):
        super().__init__(config, config.encoder_ffn_dim)
        self.self_attn = self_attn
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, src, pos=None, key_padding_mask=None, output_attentions=False):
        """src, pos (B, HW, D); key_padding_mask (B, HW) True on valid pixels."""
        weights = None

        def attend(x):
            nonlocal weights
            q = k = with_pos(x, pos)
            out, weights = self.self_attn(q, k, x, key_padding_mask, output_attentions)
            return out

        src = self.residual(src, attend, self.self_attn_layer_norm)
        return self.feed_forward_sublayer(src), weights


class DecoderLayer(TransformerLayer):
    """Self-attention among the object queries, cross-attention to the encoder memory, then the FFN."""

    def __init__(self, config):
        super().__init__(config, config.decoder_ffn_dim)
        d_model, heads = config.d_model, config.decoder_attention_heads
        self.self_attn = MultiheadAttention(d_model, heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.encoder_attn = MultiheadAttention(d_model, heads, config.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, pos=None, query_pos=None, memory_key_padding_mask=None, output_attentions=False):
        """tgt, query_pos (B, Q, D); memory, pos (B, HW, D); memory_key_padding_mask (B, HW) True on valid.
        Returns the new tgt and (self-attention weights, cross-attention weights) or Nones."""
        weights = {}

        def self_attend(x):
            q = k = with_pos(x, query_pos)
            out, weights["self"] = self.self_attn(q, k, x, None, output_attentions)
            return out

        def cross_attend(x):
            out, weights["cross"] = self.encoder_attn(
                with_pos(x, query_pos), with_pos(memory, pos), memory, memory_key_padding_mask, output_attentions
            )
            return out

        tgt = self.residual(tgt, self_attend, self.self_attn_layer_norm)
        tgt = self.residual(tgt, cross_attend, self.encoder_attn_layer_norm)
        return self.feed_forward_sublayer(tgt), (weights["self"], weights["cross"])


class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(config, build_encoder_self_attention(config)) for _ in range(config.encoder_layers)
        )
        self.layerdrop = config.encoder_layerdrop
        # pre-norm layers leave their output un-normalized, so the stack ends with a LayerNorm (as in the paper code)
        self.layernorm = nn.LayerNorm(config.d_model) if config.normalize_before else None

    def forward(self, src, pos=None, key_padding_mask=None, output_attentions=False, output_hidden_states=False):
        """Returns memory (B, HW, D), hidden states (input + each layer) and attentions, as tuples or None."""
        hidden_states = (src,) if output_hidden_states else None
        attentions = () if output_attentions else None
        for layer in self.layers:
            weights = None
            if not layer_dropped(self, self.layerdrop):
                src, weights = layer(src, pos, key_padding_mask, output_attentions)
            if output_hidden_states:
                hidden_states += (src,)
            if output_attentions:
                attentions += (weights,)
        if self.layernorm is not None:
            src = self.layernorm(src)
        return src, hidden_states, attentions


class Decoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.layerdrop = config.decoder_layerdrop
        self.layernorm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        tgt,
        memory,
        pos=None,
        query_pos=None,
        memory_key_padding_mask=None,
        return_intermediate=False,
        output_attentions=False,
        output_hidden_states=False,
    ):
        """Returns the normalized last output (B, Q, D), every layer's normalized output stacked
        (L, B, Q, D) when `return_intermediate`, hidden states, self- and cross-attentions."""
        intermediate = []
        hidden_states = (tgt,) if output_hidden_states else None
        self_attentions = () if output_attentions else None
        cross_attentions = () if output_attentions else None
        for layer in self.layers:
            self_weights = cross_weights = None
            if not layer_dropped(self, self.layerdrop):
                tgt, (self_weights, cross_weights) = layer(
                    tgt, memory, pos, query_pos, memory_key_padding_mask, output_attentions
                )
            if return_intermediate:
                # the normalized copy feeds the auxiliary heads; the next layer sees the raw output (paper code)
                intermediate.append(self.layernorm(tgt))
            if output_hidden_states:
                hidden_states += (tgt,)
            if output_attentions:
                self_attentions += (self_weights,)
                cross_attentions += (cross_weights,)
        output = intermediate[-1] if return_intermediate else self.layernorm(tgt)
        stacked = torch.stack(intermediate) if return_intermediate else None
        return output, stacked, hidden_states, self_attentions, cross_attentions
