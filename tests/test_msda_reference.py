"""The pure-PyTorch multi-scale deformable attention against a direct per-point bilinear sampler."""
import math

import pytest
import torch

from detrkit.modeling.deformable_sampling import multi_scale_deformable_attention


def per_point_msda(value, spatial_shapes, sampling_locations, attention_weights):
    """Written from the definition: for every query, head, level and point, map (x, y) in [0, 1] to pixel
    coordinates (x * w - 0.5, y * h - 0.5) (pixel centres at integer + 0.5 / size, the align_corners=False
    convention), blend the four surrounding pixels with weights (1 - |dx|)(1 - |dy|), count pixels outside
    the level as zero, and sum with the attention weights."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    output = torch.zeros(batch, queries, heads, head_dim, dtype=torch.float64)
    start = 0
    for level in range(levels):
        height, width = (int(s) for s in spatial_shapes[level])
        for b in range(batch):
            for q in range(queries):
                for h in range(heads):
                    for p in range(points):
                        x = float(sampling_locations[b, q, h, level, p, 0]) * width - 0.5
                        y = float(sampling_locations[b, q, h, level, p, 1]) * height - 0.5
                        a = float(attention_weights[b, q, h, level, p])
                        for xi in (math.floor(x), math.floor(x) + 1):
                            for yi in (math.floor(y), math.floor(y) + 1):
                                if 0 <= xi < width and 0 <= yi < height:
                                    corner = (1 - abs(x - xi)) * (1 - abs(y - yi))
                                    output[b, q, h] += a * corner * value[b, start + yi * width + xi, h].double()
        start += height * width
    return output.flatten(2)


def level_start_index(spatial_shapes):
    sizes = spatial_shapes.prod(1)
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


@pytest.mark.parametrize("shapes", [[(4, 5), (2, 3), (1, 1)], [(1, 1)], [(3, 1), (1, 4)]])
def test_random_locations_inside_and_outside(shapes):
    torch.manual_seed(0)
    spatial_shapes = torch.tensor(shapes)
    batch, queries, heads, head_dim, points = 2, 4, 2, 3, 3
    value = torch.randn(batch, int(spatial_shapes.prod(1).sum()), heads, head_dim, dtype=torch.float64)
    # [-0.3, 1.3]: about a third of the points have some or all corners in the zero padding.
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, dtype=torch.float64) * 1.6 - 0.3
    weights = torch.rand(batch, queries, heads, len(shapes), points, dtype=torch.float64)
    output = multi_scale_deformable_attention(value, spatial_shapes, level_start_index(spatial_shapes), locations,
                                              weights)
    assert output.shape == (batch, queries, heads * head_dim)
    torch.testing.assert_close(output, per_point_msda(value, spatial_shapes, locations, weights))


def test_borders_pixel_centres_and_far_outside():
    torch.manual_seed(1)
    spatial_shapes = torch.tensor([[3, 4], [1, 1]])
    # x, y at image borders, exactly on pixel centres, half a pixel outside, and far away.
    coords = [0.0, 1.0, 0.5 / 4, 3.5 / 4, -0.5 / 4, 1 + 0.5 / 4, -0.124, 1.124, 0.5, 7.0, -3.0]
    grid = torch.tensor([(x, y) for x in coords for y in coords], dtype=torch.float64)  # (121, 2)
    queries = grid.shape[0]
    locations = grid[None, :, None, None, None, :].expand(1, queries, 1, 2, 1, 2).contiguous()
    weights = torch.rand(1, queries, 1, 2, 1, dtype=torch.float64)
    value = torch.randn(1, 13, 1, 2, dtype=torch.float64)
    output = multi_scale_deformable_attention(value, spatial_shapes, level_start_index(spatial_shapes), locations,
                                              weights)
    torch.testing.assert_close(output, per_point_msda(value, spatial_shapes, locations, weights))
    # A pixel centre samples exactly that pixel; a point a full pixel outside samples nothing.
    centre = coords.index(0.5 / 4) * len(coords) + coords.index(0.5)  # x = first column, y = middle row
    level0 = value[0, 4 * 1 + 0, 0] * weights[0, centre, 0, 0, 0]
    single_pixel = value[0, 12, 0] * weights[0, centre, 0, 1, 0]  # (0.125, 0.5) on a 1x1 level: 0.625 * 1
    torch.testing.assert_close(output[0, centre], level0 + 0.625 * single_pixel)
    far = coords.index(7.0) * len(coords) + coords.index(7.0)
    assert output[0, far].abs().max() == 0


def test_gradients_reach_all_float_inputs():
    spatial_shapes = torch.tensor([[2, 3]])
    value = torch.randn(1, 6, 1, 2, requires_grad=True)
    locations = torch.rand(1, 2, 1, 1, 2, 2, requires_grad=True)
    weights = torch.rand(1, 2, 1, 1, 2, requires_grad=True)
    multi_scale_deformable_attention(value, spatial_shapes, level_start_index(spatial_shapes), locations,
                                     weights).sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (value, locations, weights))
