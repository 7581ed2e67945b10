"""2-D position encodings of the backbone feature map (DETR section 3.2 and appendix A.4)."""

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """The Transformer's sinusoidal encoding applied to y and x separately (half the channels each), with
    coordinates counted over valid pixels only so padding does not shift them.

    `normalize` rescales coordinates to [0, scale] per image; `offset` is 0 for DETR and -0.5 for Deformable
    DETR (pixel centres).
    """

    def __init__(self, num_pos_feats=128, temperature=10000, normalize=True, scale=2 * math.pi, offset=0.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.offset = offset

    def forward(self, mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """mask (B, h, w) bool, True on valid pixels -> position encoding (B, 2 * num_pos_feats, h, w)."""
        valid = mask.to(dtype)
        y_embed = valid.cumsum(1)
        x_embed = valid.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.int64, device=mask.device).to(dtype)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)

        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingLearned(nn.Module):
    """Absolute learned row and column embeddings (feature maps up to 50 x 50)."""

    def __init__(self, num_pos_feats=128, max_size=50):
        super().__init__()
        self.row_embeddings = nn.Embedding(max_size, num_pos_feats)
        self.column_embeddings = nn.Embedding(max_size, num_pos_feats)

    def forward(self, mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        batch_size, height, width = mask.shape
        max_size = self.row_embeddings.num_embeddings
        if height > max_size or width > max_size:
            raise ValueError(
                f"learned position embeddings cover feature maps up to {max_size}x{max_size}, got {height}x{width}"
            )
        x_emb = self.column_embeddings(torch.arange(width, device=mask.device))  # (w, C)
        y_emb = self.row_embeddings(torch.arange(height, device=mask.device))  # (h, C)
        pos = torch.cat([x_emb[None].expand(height, -1, -1), y_emb[:, None].expand(-1, width, -1)], dim=-1)
        return pos.permute(2, 0, 1)[None].expand(batch_size, -1, -1, -1).to(dtype)


def build_position_encoding(config, sine_offset: float = 0.0) -> nn.Module:
    """`sine_offset`: 0 for DETR, -0.5 for Deformable DETR (see PositionEmbeddingSine)."""
    num_pos_feats = config.d_model // 2
    if config.position_embedding_type == "sine":
        return PositionEmbeddingSine(num_pos_feats, normalize=True, offset=sine_offset)
    if config.position_embedding_type == "learned":
        return PositionEmbeddingLearned(num_pos_feats)
    raise ValueError(f"unknown position_embedding_type {config.position_embedding_type!r}")


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalized box coordinates -> logits, the ends clamped (Deformable DETR's eps)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_position_embedding(boxes: torch.Tensor, num_pos_feats: int = 128, temperature: int = 10000):
    """Sine embedding of each of the 4 coordinates of boxes given as logits (inverse sigmoid of cxcywh): the
    sigmoid scaled to [0, 2pi], as two-stage Deformable DETR embeds its proposals and DAB-/DN-DETR their anchors:
    (B, Q, 4) -> (B, Q, 4 * num_pos_feats). Computed in float32: temperature**k overflows in fp16."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos = boxes.sigmoid().float()[..., None] * (2 * math.pi) / dim_t  # (B, Q, 4, num_pos_feats)
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(2)
    return pos.to(boxes.dtype)
