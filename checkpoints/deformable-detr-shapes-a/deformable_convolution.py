"""Modulated deformable convolution (DCNv2, Zhu et al., CVPR 2019) and the ResNeXt-101-DCN backbones.

Deformable DETR's strongest COCO result uses ResNeXt-101 whose 3x3 convolutions in stages C3-C5 are
deformable. Each such convolution samples its k x k taps at learned offsets from the regular grid and scales
each tap by a learned modulation in [0, 1]; offsets and modulations are predicted from the input by a plain
convolution (`conv_offset`). The sampling itself is `torchvision.ops.deform_conv2d`.

The backbones are registered as timm models (`resnext101_32x8d_dcn`, `resnext101_64x4d_dcn`), so a config
names them like any other timm backbone: timm's ResNeXt is built (with its ImageNet weights when asked) and the
3x3 convolutions of layer2-layer4 are swapped for deformable ones that keep their weights.
"""

import torch
import torchvision
from timm.models import register_model
from torch import nn

DCN_STAGES = ("layer2", "layer3", "layer4")  # C3-C5, as the Deformable DETR paper (after DCNv2's own choice)


class ModulatedDeformConv2d(nn.Module):
    """A k x k convolution whose taps move by predicted offsets and are scaled by predicted masks.

    `conv_offset` predicts, per output pixel, 2 offsets (y, x) and 1 mask logit per tap and offset group. It
    starts at zero, as in DCNv2's reference implementation: offsets 0 (the regular grid) and masks sigmoid(0) =
    0.5, so a swapped-in convolution initially computes half its plain output, and learns from there.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = False, offset_groups: int = 1):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by "
                             f"groups ({groups})")
        if in_channels % offset_groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by offset_groups ({offset_groups})")
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.in_channels, self.groups, self.offset_groups = in_channels, groups, offset_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        taps = kernel_size * kernel_size
        self.conv_offset = nn.Conv2d(in_channels, offset_groups * 3 * taps, kernel_size, stride=stride,
                                     padding=padding, dilation=dilation, bias=True)
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Conv2d's default
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "ModulatedDeformConv2d":
        """The deformable counterpart of `conv` with its weights (and stride, padding, dilation, groups)."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"only zero-padded convolutions with explicit padding can be swapped, got {conv}")
        dcn = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride, conv.padding,
                  conv.dilation, conv.groups, bias=conv.bias is not None)
        with torch.no_grad():
            dcn.weight.copy_(conv.weight)
            if conv.bias is not None:
                dcn.bias.copy_(conv.bias)
        return dcn.to(conv.weight.device, conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W) -> (B, C_out, H', W')."""
        offset_y_x, mask_logits = self.conv_offset(x).split(
            [2 * self.offset_groups * self.weight.shape[-1] ** 2, self.offset_groups * self.weight.shape[-1] ** 2], 1)
        return modulated_deform_conv2d(x, offset_y_x, mask_logits.sigmoid(), self.weight, self.bias, self.stride,
                                       self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.weight.shape[0]}, kernel_size={tuple(self.weight.shape[-2:])}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"offset_groups={self.offset_groups}")


def modulated_deform_conv2d(x, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1):
    """DCNv2: out(p) = sum_k w_k * x(p + p_k + offset_k(p)) * mask_k(p), bilinear sampling.

    offset (B, 2 * G * k*k, H', W') as (y, x) pairs per tap, mask (B, G * k*k, H', W') in [0, 1]; G offset
    groups split the input channels. Zero offsets and unit masks give exactly the plain convolution."""
    if x.dtype in (torch.float16, torch.bfloat16) and x.device.type == "cpu":
        raise TypeError(f"deformable convolution on CPU needs float32 or float64 inputs, got {x.dtype}")
    return torchvision.ops.deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation,
                                         mask=mask)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def swap_in_deformable_convolutions(model: nn.Module, stages=DCN_STAGES) -> int:
    """Replace the 3x3 convolution (`conv2`) of every bottleneck block in `stages` by a ModulatedDeformConv2d
    with the same weights; returns how many were swapped."""
    swapped = 0
    for stage in stages:
        layer = getattr(model, stage, None)
        if layer is None:
            raise ValueError(f"the backbone has no stage {stage!r} to make deformable")
        for block in layer:
            block.conv2 = ModulatedDeformConv2d.from_conv(block.conv2)
            swapped += 1
    return swapped


def _resnext_dcn(base: str, pretrained: bool = False, **kwargs) -> nn.Module:
    import timm

    for name in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(name, None)  # timm's factory passes them for the registered name; the base model has its own
    model = timm.create_model(base, pretrained=pretrained, **kwargs)
    swap_in_deformable_convolutions(model)
    return model


@register_model
def resnext101_32x8d_dcn(pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's ResNeXt-101 32x8d with DCNv2 3x3 convolutions in C3-C5."""
    return _resnext_dcn("resnext101_32x8d", pretrained, **kwargs)


@register_model
def resnext101_64x4d_dcn(pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's ResNeXt-101 64x4d (the width of the Deformable DETR paper's ResNeXt-101) with DCNv2 in C3-C5."""
    return _resnext_dcn("resnext101_64x4d", pretrained, **kwargs)
