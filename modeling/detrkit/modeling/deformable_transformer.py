"""Deformable DETR's encoder-decoder (paper section 4.1 and appendix A.2-A.4).

The layers are built from DETR's `TransformerLayer` (same FFN, norms, dropout, parameter names), with multi-scale
deformable attention as the encoder self-attention and the decoder cross-attention. Every query carries a
reference point: pixel centres of each level in the encoder; in the decoder a point predicted from the object
query (one-stage) or an encoder proposal box (two-stage), refined layer by layer when a box head is attached (box
refinement).
"""

import torch
from torch import nn

from .deformable_attention import MultiScaleDeformableAttention
from .detr_transformer import TransformerLayer, layer_dropped, with_pos
from .multihead_attention import MultiheadAttention
from .position_encoding import inverse_sigmoid


def deformable_attention(config, num_heads: int, n_points: int) -> MultiScaleDeformableAttention:
    return MultiScaleDeformableAttention(
        config.d_model, config.num_feature_levels, num_heads, n_points, use_kernel=not config.disable_custom_kernels
    )


class DeformableEncoderLayer(TransformerLayer):
    """Post-norm encoder layer: deformable self-attention over all levels, then the FFN."""

    def __init__(self, config):
        super().__init__(config, config.encoder_ffn_dim)
        self.self_attn = deformable_attention(config, config.encoder_attention_heads, config.encoder_n_points)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None,
                spatial_shapes_list=None):
        """src, pos (B, S, C); reference_points (B, S, L, 2); padding_mask (B, S) True at padding."""
        attended, weights = self.self_attn(
            src, reference_points, src, spatial_shapes, level_start_index, padding_mask, query_pos=pos,
            spatial_shapes_list=spatial_shapes_list,
        )
        src = self.add_and_norm(src, attended, self.self_attn_layer_norm)
        return self.feed_forward_sublayer(src), weights


class DeformableDecoderLayer(TransformerLayer):
    """Post-norm decoder layer: self-attention among queries, deformable cross-attention, then the FFN."""

    def __init__(self, config):
        super().__init__(config, config.decoder_ffn_dim)
        self.self_attn = MultiheadAttention(config.d_model, config.decoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.encoder_attn = deformable_attention(config, config.decoder_attention_heads, config.decoder_n_points)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, level_start_index,
                memory_padding_mask=None, output_attentions=False, spatial_shapes_list=None, self_attention_mask=None):
        """tgt, query_pos (B, Q, C); reference_points (B, Q, L, 2 or 4); memory (B, S, C); self_attention_mask
        (Q, Q) True where a query may attend to another (training's extra queries), or None."""
        q = k = with_pos(tgt, query_pos)
        attended, self_weights = self.self_attn(q, k, tgt, None, output_attentions, attention_mask=self_attention_mask)
        tgt = self.add_and_norm(tgt, attended, self.self_attn_layer_norm)
        attended, cross_weights = self.encoder_attn(
            tgt, reference_points, memory, spatial_shapes, level_start_index, memory_padding_mask, query_pos=query_pos,
            spatial_shapes_list=spatial_shapes_list,
        )
        tgt = self.add_and_norm(tgt, attended, self.encoder_attn_layer_norm)
        return self.feed_forward_sublayer(tgt), (self_weights, cross_weights)


class DeformableEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(config) for _ in range(config.encoder_layers))
        self.layerdrop = config.encoder_layerdrop

    @staticmethod
    def get_reference_points(spatial_shapes: list[tuple[int, int]], valid_ratios: torch.Tensor) -> torch.Tensor:
        """Pixel centres of every level, normalised by the valid (unpadded) extent of each image, then
        expressed in every level's padded frame: (B, S, L, 2) as (x, y)."""
        points = []
        for level, (height, width) in enumerate(spatial_shapes):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=valid_ratios.dtype, device=valid_ratios.device),
                torch.linspace(0.5, width - 0.5, width, dtype=valid_ratios.dtype, device=valid_ratios.device),
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
            points.append(torch.stack((ref_x, ref_y), -1))
        return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]

    def forward(self, src, pos, spatial_shapes, level_start_index, valid_ratios, padding_mask=None,
                output_attentions=False, output_hidden_states=False, spatial_shapes_list=None):
        """src, pos (B, S, C) flattened levels; returns memory (B, S, C), hidden states, attentions.
        spatial_shapes_list: (h_l, w_l) as ints from the feature maps (kept symbolic by an ONNX trace)."""
        shapes = spatial_shapes.tolist() if spatial_shapes_list is None else spatial_shapes_list
        reference_points = self.get_reference_points(shapes, valid_ratios)
        hidden_states = (src,) if output_hidden_states else None
        attentions = () if output_attentions else None
        for layer in self.layers:
            weights = None
            if not layer_dropped(self, self.layerdrop):
                src, weights = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask,
                                     spatial_shapes_list)
            if output_hidden_states:
                hidden_states += (src,)
            if output_attentions:
                attentions += (weights,)
        return src, hidden_states, attentions


class DeformableDecoder(nn.Module):
    """Returns every layer's output and reference points. With box refinement, `bbox_embed` (one head per
    layer, given by DeformableDetrModel) moves each layer's reference boxes; the next layer's input reference
    points are detached, as the paper. With `look_forward_twice` (DINO) the returned ones are not: a layer's box
    loss then also trains the previous layer's box head. Two-stage adds `class_embed`, whose last head scores
    the encoder proposals."""

    def __init__(self, config, bbox_embed: nn.ModuleList | None = None, class_embed: nn.ModuleList | None = None):
        super().__init__()
        self.layers = nn.ModuleList(DeformableDecoderLayer(config) for _ in range(config.decoder_layers))
        self.layerdrop = config.decoder_layerdrop
        self.bbox_embed = bbox_embed
        self.class_embed = class_embed
        self.look_forward_twice = config.look_forward_twice

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, level_start_index, valid_ratios,
                memory_padding_mask=None, output_attentions=False, output_hidden_states=False,
                spatial_shapes_list=None, self_attention_mask=None):
        """tgt, query_pos (B, Q, C); reference_points (B, Q, 2 or 4) in [0, 1] of the valid image area;
        self_attention_mask (Q, Q) bool True where a query may attend to another, or None.
        Returns stacked outputs (B, num_layers, Q, C), stacked reference points (B, num_layers, Q, 2 or 4),
        hidden states, self-attentions, cross-attentions."""
        intermediate, intermediate_reference_points = [], []
        hidden_states = (tgt,) if output_hidden_states else None
        self_attentions = () if output_attentions else None
        cross_attentions = () if output_attentions else None
        for idx, layer in enumerate(self.layers):
            # reference points live in valid-area coordinates; each level's padded frame scales them down
            scale = valid_ratios if reference_points.shape[-1] == 2 else torch.cat([valid_ratios, valid_ratios], -1)
            reference_points_input = reference_points[:, :, None] * scale[:, None]
            self_weights = cross_weights = None
            dropped = layer_dropped(self, self.layerdrop)
            if not dropped:
                tgt, (self_weights, cross_weights) = layer(
                    tgt, query_pos, reference_points_input, memory, spatial_shapes, level_start_index,
                    memory_padding_mask, output_attentions, spatial_shapes_list, self_attention_mask,
                )
            returned_reference_points = reference_points
            if self.bbox_embed is not None and not dropped:
                delta = self.bbox_embed[idx](tgt)
                if reference_points.shape[-1] == 4:
                    new_reference_points = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:  # a point refines into a box: the head's (w, h) start from zero logits
                    new_reference_points = torch.cat(
                        [delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1
                    ).sigmoid()
                reference_points = new_reference_points.detach()
                returned_reference_points = new_reference_points if self.look_forward_twice else reference_points
            intermediate.append(tgt)
            intermediate_reference_points.append(returned_reference_points)
            if output_hidden_states:
                hidden_states += (tgt,)
            if output_attentions:
                self_attentions += (self_weights,)
                cross_attentions += (cross_weights,)
        return (torch.stack(intermediate, 1), torch.stack(intermediate_reference_points, 1), hidden_states,
                self_attentions, cross_attentions)


def encoder_output_proposals(memory: torch.Tensor, padding_mask: torch.Tensor, spatial_shapes: list[tuple[int, int]]):
    """Two-stage (appendix A.4): one proposal per encoder pixel, a box centred on it with size 0.05 * 2^level of
    the valid image. Padding pixels and proposals too close to the border are disabled (their logits set to
    +inf, their features to 0).

    memory (B, S, C), padding_mask (B, S) True at padding -> (memory masked (B, S, C),
    proposals (B, S, 4) as unnormalised logits, i.e. inverse sigmoid of cxcywh).
    """
    batch_size = memory.shape[0]
    proposals, start = [], 0
    for level, (height, width) in enumerate(spatial_shapes):
        valid = ~padding_mask[:, start:start + height * width].view(batch_size, height, width)
        valid_height, valid_width = valid[:, :, 0].sum(1), valid[:, 0, :].sum(1)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, height - 1, height, dtype=memory.dtype, device=memory.device),
            torch.linspace(0, width - 1, width, dtype=memory.dtype, device=memory.device),
            indexing="ij",
        )
        grid = torch.stack([grid_x, grid_y], -1)  # (h, w, 2)
        valid_size = torch.stack([valid_width, valid_height], -1).view(batch_size, 1, 1, 2).to(memory.dtype)
        centres = (grid[None] + 0.5) / valid_size
        sizes = torch.full_like(centres, 0.05 * 2.0**level)
        proposals.append(torch.cat((centres, sizes), -1).view(batch_size, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)
    usable = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True) & ~padding_mask[..., None]
    proposals = torch.log(proposals / (1 - proposals)).masked_fill(~usable, float("inf"))
    return memory.masked_fill(~usable, 0.0), proposals
