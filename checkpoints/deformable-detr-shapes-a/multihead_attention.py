"""Multi-head attention (Vaswani et al. 2017) as DETR uses it: position encodings are added by the caller, padded
keys are masked, and the weights are materialised only when asked for."""

import torch
import torch.nn.functional as F
from torch import nn


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
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query (B, Lq, D), key/value (B, Lk, D), key_padding_mask (B, Lk) bool True on valid keys or None,
        attention_mask (Lq, Lk) bool True where a query may attend to a key, or None.
        Returns the output (B, Lq, D) and, if requested, the weights (B, H, Lq, Lk)."""
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        if attention_mask is not None:
            attn_mask = attention_mask if attn_mask is None else attn_mask & attention_mask
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
