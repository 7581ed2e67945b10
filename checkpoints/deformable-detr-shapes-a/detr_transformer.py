"""DETR's encoder-decoder transformer (paper section 3.2, figure 10).

Differences from the NLP Transformer, as in the paper: spatial position encodings are added to queries and keys
of every attention layer (never to values), object queries are learned positional encodings added at every
decoder layer, and the decoder returns every layer's output (through a shared LayerNorm) for auxiliary losses.

The encoder self-attention comes from `config.encoder_attention_type` (encoder_attention.py), so approximate
attentions (ACT's clustered attention) drop into a trained DETR.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from .encoder_attention import build_encoder_self_attention
from .multihead_attention import MultiheadAttention


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

    # A seam (seams.py) for memory savers (detrkit.training.memory_savers): None, or a callable (x, fc1, activation,
    # activation_dropout, fc2) -> the block's output, the same values computed with less kept for backward.
    feed_forward_function = None

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feed_forward_function is not None:
            return self.feed_forward_function(x, self.fc1, self.activation, self.activation_dropout, self.fc2)
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

    def forward(self, tgt, memory, pos=None, query_pos=None, memory_key_padding_mask=None, output_attentions=False,
                self_attention_mask=None):
        """tgt, query_pos (B, Q, D); memory, pos (B, HW, D); memory_key_padding_mask (B, HW) True on valid;
        self_attention_mask (Q, Q) bool True where a query may attend to another (training's denoising queries),
        or None. Returns the new tgt and (self-attention weights, cross-attention weights) or Nones."""
        weights = {}

        def self_attend(x):
            q = k = with_pos(x, query_pos)
            out, weights["self"] = self.self_attn(q, k, x, None, output_attentions, attention_mask=self_attention_mask)
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
        self_attention_mask=None,
    ):
        """self_attention_mask: (Q, Q) bool, True where a query may attend to another, or None (all).
        Returns the normalized last output (B, Q, D), every layer's normalized output stacked
        (L, B, Q, D) when `return_intermediate`, hidden states, self- and cross-attentions."""
        intermediate = []
        hidden_states = (tgt,) if output_hidden_states else None
        self_attentions = () if output_attentions else None
        cross_attentions = () if output_attentions else None
        for layer in self.layers:
            self_weights = cross_weights = None
            if not layer_dropped(self, self.layerdrop):
                tgt, (self_weights, cross_weights) = layer(
                    tgt, memory, pos, query_pos, memory_key_padding_mask, output_attentions, self_attention_mask
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
