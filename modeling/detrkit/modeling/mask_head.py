"""DETR's panoptic head (Carion et al., 2020, section 4.4 and figure 8): a multi-head attention map of each
decoder output over the encoder memory, and a small FPN-like convolutional head that turns those maps into one
mask logit map per query at 1/4 of the input resolution.

Module names are the official repository's (`q_linear`, `lay1`, `gn1`, `adapter1`, `out_lay`), which are also
the on-disk names of transformers' `DetrForSegmentation` checkpoints.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _group_norm(channels: int) -> nn.GroupNorm:
    # the paper's 8 groups; fewer when a tiny head has fewer channels (as transformers does)
    return nn.GroupNorm(min(8, channels), channels)


class MHAttentionMap(nn.Module):
    """Attention weights only (no values): (B, Q, D) queries over a (B, D, h, w) memory -> (B, Q, heads, h, w).

    The softmax runs over heads and pixels together, as in the official code, so the maps of one query sum to 1.
    """

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.q_linear = nn.Linear(query_dim, hidden_dim)
        self.k_linear = nn.Linear(query_dim, hidden_dim)
        self.normalize_fact = float(hidden_dim / num_heads) ** -0.5

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, padding_mask: torch.Tensor | None = None):
        """queries (B, Q, D); memory (B, D, h, w); padding_mask (B, h, w) True on padding."""
        head_dim = self.hidden_dim // self.num_heads
        q = self.q_linear(queries)
        # the key projection applied per pixel: a 1x1 convolution with the linear's weights
        k = F.conv2d(memory, self.k_linear.weight[:, :, None, None], self.k_linear.bias)
        qh = q.view(q.shape[0], q.shape[1], self.num_heads, head_dim)
        kh = k.view(k.shape[0], self.num_heads, head_dim, k.shape[-2], k.shape[-1])
        weights = torch.einsum("bqnc,bnchw->bqnhw", qh * self.normalize_fact, kh)
        if padding_mask is not None:
            weights = weights.masked_fill(padding_mask[:, None, None], float("-inf"))
        return weights.flatten(2).softmax(-1).view(weights.shape)


class MaskHeadSmallConv(nn.Module):
    """Two 3x3 conv + GroupNorm + ReLU blocks on [projected C5 features, attention maps] at the memory's
    resolution, then three FPN steps that upsample (nearest) and add 1x1-adapted backbone features C4, C3, C2,
    each followed by a conv block, and a final 3x3 conv to one channel: mask logits at C2's resolution (1/4)."""

    def __init__(self, dim: int, fpn_dims: list[int], context_dim: int):
        super().__init__()
        self.num_maps = dim - context_dim  # lay1's inputs: context_dim feature channels, then the attention maps
        inter_dims = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        for name, channels in (("dim (d_model + attention heads)", dim), ("d_model / 16", inter_dims[-1])):
            if channels < 1 or channels % min(8, channels):
                raise ValueError(f"the mask head's {name} = {channels} must be a positive multiple of 8 (or below "
                                 f"8) for its GroupNorm: choose d_model and the number of attention heads to fit")
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = _group_norm(dim)
        self.lay2 = nn.Conv2d(dim, inter_dims[1], 3, padding=1)
        self.gn2 = _group_norm(inter_dims[1])
        self.lay3 = nn.Conv2d(inter_dims[1], inter_dims[2], 3, padding=1)
        self.gn3 = _group_norm(inter_dims[2])
        self.lay4 = nn.Conv2d(inter_dims[2], inter_dims[3], 3, padding=1)
        self.gn4 = _group_norm(inter_dims[3])
        self.lay5 = nn.Conv2d(inter_dims[3], inter_dims[4], 3, padding=1)
        self.gn5 = _group_norm(inter_dims[4])
        self.out_lay = nn.Conv2d(inter_dims[4], 1, 3, padding=1)
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter_dims[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter_dims[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], inter_dims[3], 1)

    def forward(self, features: torch.Tensor, attention_maps: torch.Tensor, fpn_features: list[torch.Tensor]):
        """features (B, D, h, w); attention_maps (B, Q, heads, h, w); fpn_features [C4, C3, C2], each (B, C, h', w').
        Returns (B * Q, 1, H/4, W/4) mask logits."""
        batch_size, num_queries = attention_maps.shape[:2]
        # lay1 reads [features, attention maps] concatenated per query; split by input channels, the features'
        # part (D of the D + heads channels) is one convolution per image instead of one per query
        dim = features.shape[1]
        x = F.conv2d(features, self.lay1.weight[:, :dim], self.lay1.bias, padding=1)  # (B, D', h, w)
        x = x[:, None] + F.conv2d(attention_maps.flatten(0, 1), self.lay1.weight[:, dim:], padding=1).unflatten(
            0, (batch_size, num_queries))
        x = self.gn1(x.flatten(0, 1)).relu()
        x = self.gn2(self.lay2(x)).relu()
        steps = ((self.adapter1, self.lay3, self.gn3), (self.adapter2, self.lay4, self.gn4),
                 (self.adapter3, self.lay5, self.gn5))
        for (adapter, conv, norm), fpn in zip(steps, fpn_features):
            fpn = adapter(fpn)  # once per image, then added to each of its queries' maps by broadcasting
            x = F.interpolate(x, size=fpn.shape[-2:], mode="nearest")
            x = (x.unflatten(0, (batch_size, num_queries)) + fpn[:, None]).flatten(0, 1)
            x = norm(conv(x)).relu()
        return self.out_lay(x)


__all__ = ["MHAttentionMap", "MaskHeadSmallConv"]
