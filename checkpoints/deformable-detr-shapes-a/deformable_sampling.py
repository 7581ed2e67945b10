"""The sampling of multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, eq. 3) as a function, pure
PyTorch: `multi_scale_deformable_attention(value, spatial_shapes, ...)`. The module that regresses its sampling
points and weights, `MultiScaleDeformableAttention`, is in deformable_attention.py.

This is the reference and the fallback for the fast kernels in `detrkit.kernels`; it has exactly the
semantics of the official code's `ms_deform_attn_core_pytorch` and of transformers'
`MultiScaleDeformableAttention`: bilinear sampling with `grid_sample(align_corners=False)` and zero padding,
so a sampling location (x, y) in [0, 1] addresses the continuous pixel coordinate (x * W - 0.5, y * H - 0.5).

While an ONNX export traces the encoder's self-attention (`torch.jit.is_tracing()`), the same sum is written as
`one_canvas_msda`: one GridSample over all levels instead of one per level, which ONNX runtimes execute faster
(eager results unchanged).

Imports torch only: this file is copied as-is by `trust_remote_code`.
"""
import torch
import torch.nn.functional as F


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Attention-weighted sum of bilinearly sampled values over levels and points.

    Args:
        value: (B, S, H, D) values of all levels flattened, S = sum_l h_l * w_l.
        spatial_shapes: (L, 2) long, (h_l, w_l) of each level (a list of pairs also works).
        level_start_index: (L,) offset of each level in S; implied by `spatial_shapes`, kept for the
            kernels' signature.
        sampling_locations: (B, Q, H, L, P, 2) normalised (x, y), (0, 0) the top-left image corner.
        attention_weights: (B, Q, H, L, P), usually softmax-normalised over L * P.

    Returns:
        (B, Q, H * D)
    """
    batch_size, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = spatial_shapes.tolist() if torch.is_tensor(spatial_shapes) else [tuple(s) for s in spatial_shapes]
    if torch.jit.is_tracing() and int(num_queries) == int(value.shape[1]):
        # the encoder (every position a query): one GridSample over a canvas. The decoder's few queries do not
        # repay building the canvas, so it keeps the per-level form; both are exact at every size.
        return one_canvas_msda(value, shapes, sampling_locations, attention_weights)
    value_list = value.split([h * w for h, w in shapes], dim=1)  # no int(): a trace keeps the sizes symbolic
    sampling_grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for level, (height, width) in enumerate(shapes):
        # (B, h*w, H, D) -> (B*H, D, h, w)
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(batch_size * num_heads, head_dim, height, width)
        # (B, Q, H, P, 2) -> (B*H, Q, P, 2)
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # (B*H, D, Q, P)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B, Q, H, L, P) -> (B*H, 1, Q, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch_size * num_heads, 1, num_queries, num_levels * num_points)
    # (B*H, D, Q, L*P) -> (B, H*D, Q)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(batch_size, num_heads * head_dim, num_queries).transpose(1, 2).contiguous()


def one_canvas_msda(value, shapes, sampling_locations, attention_weights):
    """`multi_scale_deformable_attention` as the ONNX export writes it: one grid_sample for all levels and points.

    The levels are stacked top to bottom in one zero-padded canvas (B*H, D, sum_l (h_l + 1), max_l w_l), each
    followed by a row of zeros, and every sampling location is mapped into its level's rectangle. A per-level
    graph instead runs L GridSamples and concatenates their (B*H, D, Q, P) outputs, a copy as large as the
    sampled values themselves. Zero padding stays exact: pixel coordinates are clamped to [-1, w_l] x [-1, h_l]
    first, where every bilinear neighbour outside the level is a zero of the canvas (its border, the padding
    to the right, the separating row), so a point never reads a neighbouring level. Differs from the per-level
    sum by float rounding of the coordinates only. `shapes`: (h_l, w_l) pairs (traced sizes stay symbolic).
    """
    batch_size, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    heights = torch.stack([torch.as_tensor(height) for height, _ in shapes]).to(value.dtype)
    widths = torch.stack([torch.as_tensor(width) for _, width in shapes]).to(value.dtype)
    canvas_width, canvas_height = widths.max(), (heights + 1).sum()
    # (B, S, H, D) -> (B*H, D, S): one transpose, then each level is a contiguous slice
    values = value.permute(0, 2, 3, 1).reshape(batch_size * num_heads, head_dim, -1)
    values = values.split([height * width for height, width in shapes], dim=-1)
    canvas = torch.cat([
        F.pad(level.reshape(batch_size * num_heads, head_dim, height, width),
              (0, canvas_width.to(torch.long) - width, 0, 1))
        for level, (height, width) in zip(values, shapes)
    ], dim=2)
    # location x in [0, 1] is pixel x * w - 0.5 of its level; clamping that to [-1, w] is clamping x to
    # [-0.5 / w, 1 + 0.5 / w]. The canvas' normalised coordinate is then x * w * 2 / W - 1 (+ the level's row
    # offset for y): the half pixels of the level and of grid_sample's align_corners=False cancel.
    # Per-level constants as (L*P*2,) vectors over the contiguous last axis of the locations: a trailing
    # broadcast, which runtimes execute as fast as a scalar one.
    def per_point(pair):  # (L, 2) -> (L*P*2,)
        return pair[:, None].expand(-1, num_points, -1).reshape(-1)

    size = torch.stack([widths, heights], -1)  # (L, 2) as (w, h)
    row_offset = torch.cat([heights.new_zeros(1), (heights + 1).cumsum(0)[:-1]])
    scale = 2 / torch.stack([canvas_width, canvas_height])  # (2,)
    shift = torch.stack([torch.zeros_like(row_offset), row_offset], -1) * scale - 1
    locations = sampling_locations.reshape(batch_size, num_queries, num_heads, -1)
    locations = torch.minimum(torch.maximum(locations, per_point(-0.5 / size)), per_point(1 + 0.5 / size))
    grid = locations * per_point(size * scale) + per_point(shift)  # (B, Q, H, L*P*2)
    grid = grid.transpose(1, 2).reshape(batch_size * num_heads, num_queries, num_levels * num_points, 2)
    sampled = F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # (B, Q, H, L, P) -> (B*H, 1, Q, L*P); (B*H, D, Q, L*P) -> (B*H, D, Q)
    weights = attention_weights.transpose(1, 2).reshape(batch_size * num_heads, 1, num_queries, num_levels * num_points)
    output = (sampled * weights).sum(-1)
    return output.view(batch_size, num_heads * head_dim, num_queries).transpose(1, 2).contiguous()
