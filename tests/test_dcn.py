"""DCNv2 (modulated deformable convolution) and the ResNeXt-101-DCN backbone.

References: torch's own convolution (zero offsets + unit masks must reproduce it exactly, groups, stride and
dilation included), a direct bilinear-sampling evaluation of the DCNv2 formula for non-zero offsets, and
gradcheck in float64."""

import pytest
import timm
import torch
import torch.nn.functional as F

from detrkit.modeling import config_from_preset
from detrkit.modeling.deformable_convolution import ModulatedDeformConv2d, modulated_deform_conv2d


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 1, 1, 4), (1, 2, 2, 2)])
def test_zero_offsets_unit_masks_equal_plain_convolution(stride, padding, dilation, groups):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 11, 13)
    weight, bias = torch.randn(12, 8 // groups, 3, 3), torch.randn(12)
    expected = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    offset = torch.zeros(2, 18, *expected.shape[-2:])
    mask = torch.ones(2, 9, *expected.shape[-2:])
    actual = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def _bilinear(x, y, px):
    """x (C, H, W) sampled at (y, px) with zeros outside, the DCN convention."""
    height, width = x.shape[-2:]
    y0, x0 = int(torch.floor(torch.tensor(y))), int(torch.floor(torch.tensor(px)))
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < height and 0 <= xx < width:
                total += x[:, yy, xx] * (1 - abs(y - yy)) * (1 - abs(px - xx))
    return total


def test_offsets_and_masks_follow_the_dcnv2_formula():
    """out(p) = sum_k w_k . x(p + p_k + dp_k) * m_k, written out pixel by pixel."""
    torch.manual_seed(1)
    x, weight = torch.randn(1, 2, 5, 6, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    offset = torch.randn(1, 18, 5, 6, dtype=torch.float64) * 1.3
    mask = torch.rand(1, 9, 5, 6, dtype=torch.float64)
    actual = modulated_deform_conv2d(x, offset, mask, weight, padding=1)
    expected = torch.zeros_like(actual)
    for i in range(5):
        for j in range(6):
            for k in range(9):
                ky, kx = divmod(k, 3)
                y = i - 1 + ky + offset[0, 2 * k, i, j].item()
                px = j - 1 + kx + offset[0, 2 * k + 1, i, j].item()
                sample = _bilinear(x[0], y, px) * mask[0, k, i, j]
                expected[0, :, i, j] += weight[:, :, ky, kx] @ sample
    torch.testing.assert_close(actual, expected)


def test_gradcheck_float64():
    torch.manual_seed(2)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(1, dtype=torch.float64, requires_grad=True)
    # offsets away from integers: bilinear sampling is not differentiable exactly on the grid lines
    offset = (torch.rand(1, 18, 3, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    mask = torch.rand(1, 9, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: modulated_deform_conv2d(*a, padding=1), (x, offset, mask, weight, bias), eps=1e-6, atol=1e-5
    )


def test_module_from_conv_starts_at_half_the_plain_output_and_trains_its_offsets():
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4, bias=False)
    dcn = ModulatedDeformConv2d.from_conv(conv)
    x = torch.randn(1, 8, 9, 9)
    # zero-initialised offset branch: regular grid, masks sigmoid(0) = 0.5 (DCNv2's reference initialisation)
    torch.testing.assert_close(dcn(x), 0.5 * conv(x), atol=1e-5, rtol=1e-5)
    dcn(x).square().sum().backward()
    assert dcn.conv_offset.weight.grad.abs().sum() > 0 and dcn.weight.grad is not None


def test_module_refuses_bad_groups():
    with pytest.raises(ValueError, match="divisible by groups"):
        ModulatedDeformConv2d(6, 8, groups=4)


@pytest.mark.parametrize("name,base", [("resnext101_64x4d_dcn", "resnext101_64x4d"),
                                       ("resnext101_32x8d_dcn", "resnext101_32x8d")])
def test_resnext_dcn_backbone_swaps_c3_to_c5_and_keeps_weights(name, base):
    torch.manual_seed(0)
    dcn = timm.create_model(name, features_only=True, out_indices=(2, 3, 4))
    torch.manual_seed(0)
    plain = timm.create_model(base, features_only=True, out_indices=(2, 3, 4))
    swapped = [n for n, m in dcn.named_modules() if isinstance(m, ModulatedDeformConv2d)]
    assert len(swapped) == 4 + 23 + 3 and all(n.startswith(("layer2.", "layer3.", "layer4.")) for n in swapped)
    assert not any(isinstance(m, ModulatedDeformConv2d) for m in dcn.layer1.modules())
    torch.testing.assert_close(dcn.layer3[5].conv2.weight, plain.layer3[5].conv2.weight)
    assert dcn.feature_info.channels() == [512, 1024, 2048]


def test_preset_builds_the_papers_strongest_configuration():
    config = config_from_preset("deformable-detr-resnext101-dcn")
    assert config.backbone == "resnext101_64x4d_dcn"
    assert config.two_stage and config.with_box_refine and config.num_labels == 91
