"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, eq. 3), pure PyTorch.

This is the reference and the fallback for the fast kernels in `detrkit.kernels`; it has exactly the
semantics of the official code's `ms_deform_attn_core_pytorch` and of transformers'
`MultiScaleDeformableAttention`: bilinear sampling with `grid_sample(align_corners=False)` and zero padding,
so a sampling location (x, y) in [0, 1] addresses the continuous pixel coordinate (x * W - 0.5, y * H - 0.5).

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
