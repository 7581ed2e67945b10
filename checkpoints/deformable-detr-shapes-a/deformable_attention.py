"""Multi-scale deformable attention module (Deformable DETR, Zhu et al. 2021, sec. 4.1, eq. 3).

Each query attends to a small fixed set of sampling points around its reference point: for every head h,
level l and point k it regresses an offset and a weight from the query feature; the weights are normalised
by a softmax over all levels x points. The bilinear sampling itself is one function call
(`multi_scale_deformable_attention`, deformable_sampling.py), served by the compiled kernels when detrkit is
installed and by the pure-PyTorch reference otherwise (e.g. under `trust_remote_code`, where only modeling/ is
copied).

The sampling is also the module's seam: `sampling_function`, when set (seams.py: `override_seam` for a block),
is called instead, with `multi_scale_deformable_attention`'s arguments. The ONNX export writes a custom node
through it and the attention pictures record the sampling points through it.
"""
import math

import torch
from torch import nn
from transformers import initialization as init

from .detr_transformer import with_pos
from .deformable_sampling import multi_scale_deformable_attention

try:  # optional: absent under trust_remote_code, where the reference serves
    from detrkit.kernels import multi_scale_deformable_attention as compiled_msda
except ImportError:
    compiled_msda = None


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over L feature levels with P sampling points per head and level.

    Parameter names follow the official code and transformers (`sampling_offsets`, `attention_weights`,
    `value_proj`, `output_proj`) so their checkpoints load unchanged.

    `sampling_function`: None (the kernel or the reference, `default_sampling`), or a callable taking
    `multi_scale_deformable_attention`'s arguments (value, spatial_shapes, level_start_index, sampling_locations,
    attention_weights) and returning its (B, Q, C) result. spatial_shapes is the (L, 2) tensor, or while a trace
    runs the (h_l, w_l) pairs read from the feature maps (symbolic sizes).
    `query_projection_function`: a seam for memory savers (detrkit.training.memory_savers): None, or a callable
    (query, query_pos, sampling_offsets, attention_weights) -> (offsets, logits), the same values as the two
    projections of query + query_pos. Both seams are set through seams.py.
    """

    sampling_function = None
    query_projection_function = None

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4, use_kernel=True):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by the number of heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.use_kernel = use_kernel
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """The paper's initialisation (through transformers' guarded init, so loaded weights survive)."""
        # Offsets start on a radial grid: head h points in direction 2*pi*h/H, point k at distance k+1
        # (in pixels of each level), so the heads initially look in different directions at growing range.
        init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values  # onto the unit square's border
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        init.copy_(self.sampling_offsets.bias, grid.flatten())
        # Zero weights: uniform attention over all L*P points at the start.
        init.constant_(self.attention_weights.weight, 0.0)
        init.constant_(self.attention_weights.bias, 0.0)
        for proj in (self.value_proj, self.output_proj):
            init.xavier_uniform_(proj.weight)
            init.constant_(proj.bias, 0.0)

    def _point_locations(self, reference_points, sampling_offsets, spatial_shapes):
        """reference (x, y) + offset / (w_l, h_l) -> (B, Q, H, L, P, 2), as one multiply-add over the contiguous
        (level, point, xy) axis: the same broadcast written over six dimensions costs ten times more on CPU."""
        batch_size, num_queries = sampling_offsets.shape[:2]
        per_head = self.n_levels * self.n_points * 2
        inverse_size = spatial_shapes.flip(-1).to(sampling_offsets.dtype).reciprocal()  # (L, 2) as (1/w, 1/h)
        scale = inverse_size[:, None].expand(-1, self.n_points, -1).reshape(per_head)
        reference = reference_points[:, :, :, None].expand(-1, -1, -1, self.n_points, -1)
        reference = reference.reshape(batch_size, num_queries, 1, per_head)
        offsets = sampling_offsets.view(batch_size, num_queries, self.n_heads, per_head)
        locations = torch.addcmul(reference, offsets, scale)
        return locations.view(batch_size, num_queries, self.n_heads, self.n_levels, self.n_points, 2)

    def project_query(self, query, query_pos):
        """Sampling offsets and attention logits, both regressed from query + query_pos (eq. 3)."""
        if self.query_projection_function is not None:
            return self.query_projection_function(query, query_pos, self.sampling_offsets, self.attention_weights)
        query = with_pos(query, query_pos)
        return self.sampling_offsets(query), self.attention_weights(query)

    def forward(self, query, reference_points, value, spatial_shapes, level_start_index, value_padding_mask=None,
                query_pos=None, spatial_shapes_list=None):
        """
        Args:
            query: (B, Q, C) query features.
            reference_points: (B, Q, L, 2) normalised (x, y) centres, or (B, Q, L, 4) boxes (cx, cy, w, h),
                in which case offsets are scaled by half the box size (two-stage / box refinement).
            value: (B, S, C) flattened multi-level features, S = sum_l h_l * w_l.
            spatial_shapes: (L, 2) long, (h_l, w_l).
            level_start_index: (L,) long, start of each level in S.
            value_padding_mask: (B, S) bool, True at padding: those values are zeroed so they add nothing.
            query_pos: (B, Q, C) position embedding added to the query (None: already added).
            spatial_shapes_list: the same (h_l, w_l) as Python ints taken from the feature maps' shapes, so an
                ONNX trace keeps them symbolic (`spatial_shapes.tolist()` would freeze the traced input size).

        Returns:
            output (B, Q, C) and the attention weights (B, Q, H, L, P).
        """
        batch_size, num_queries, _ = query.shape
        shape = (batch_size, num_queries, self.n_heads, self.n_levels, self.n_points)
        sampling_offsets, attention_weights = self.project_query(query, query_pos)
        attention_weights = attention_weights.reshape(batch_size, num_queries, self.n_heads, -1)
        attention_weights = attention_weights.softmax(-1).view(shape)

        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: normalise by (w_l, h_l).
            sampling_locations = self._point_locations(reference_points, sampling_offsets, spatial_shapes)
        elif reference_points.shape[-1] == 4:
            # Offsets relative to the box: P points spread within half its width/height.
            sampling_offsets = sampling_offsets.view(*shape, 2)
            sampling_locations = (reference_points[:, :, None, :, None, :2]
                                  + sampling_offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape[-1]}")

        sequence_length = value.shape[1]
        value = self.value_proj(value)
        if value_padding_mask is not None:
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(batch_size, sequence_length, self.n_heads, self.d_model // self.n_heads)
        if self.sampling_function is None:
            output = self.default_sampling(value, spatial_shapes, level_start_index, sampling_locations,
                                           attention_weights, spatial_shapes_list)
        else:
            tracing = torch.jit.is_tracing() and spatial_shapes_list is not None
            output = self.sampling_function(value, spatial_shapes_list if tracing else spatial_shapes,
                                            level_start_index, sampling_locations, attention_weights)
        return self.output_proj(output), attention_weights

    def default_sampling(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                         spatial_shapes_list=None):
        """The compiled kernel when detrkit's kernels load, else the PyTorch reference. An ONNX trace records the
        reference: grid_sample is a standard ONNX op, the kernel is not."""
        if compiled_msda is not None and torch.is_tensor(spatial_shapes) and not torch.jit.is_tracing():
            return compiled_msda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                 use_kernel=self.use_kernel)
        shapes = spatial_shapes if spatial_shapes_list is None else spatial_shapes_list
        return multi_scale_deformable_attention(value, shapes, level_start_index, sampling_locations,
                                                attention_weights)

