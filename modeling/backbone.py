"""CNN backbone: any timm model with `features_only`, frozen BatchNorm, and the pixel mask carried to each stage."""

import contextlib

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# registers timm names such as resnext101_64x4d_dcn; a relative import, so Hub remote code ships the file too
from .deformable_convolution import DCN_STAGES  # noqa: F401

# Set while a checkpoint is being loaded: its weights replace the backbone's, so fetching timm's ImageNet
# weights first would only cost a download (or fail offline).
_SKIP_PRETRAINED_DOWNLOAD = False


@contextlib.contextmanager
def no_pretrained_backbone_download():
    global _SKIP_PRETRAINED_DOWNLOAD
    previous, _SKIP_PRETRAINED_DOWNLOAD = _SKIP_PRETRAINED_DOWNLOAD, True
    try:
        yield
    finally:
        _SKIP_PRETRAINED_DOWNLOAD = previous


class FrozenBatchNorm2d(torchvision.ops.FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (fixed statistics and affine, same state-dict layout, ignores
    `num_batches_tracked`) as one fused multiply-add, x * scale + shift. Unlike the inference `batch_norm`
    kernel, whose autograd keeps the input for a weight gradient frozen statistics never need, it saves only
    the per-channel scale: 0.4 GiB less in a ResNet-50 training step at 800x1066, and a faster pass."""

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        # the frozen affine in the activations' dtype, so autocast's bf16/fp16 stays bf16/fp16
        return torch.addcmul(shift.to(x.dtype)[:, None, None], x, scale.to(x.dtype)[:, None, None])


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d under `module` by its frozen counterpart, keeping its statistics."""
    if isinstance(module, timm.layers.BatchNormAct2d):
        return timm.layers.freeze_batch_norm_2d(module)  # keeps the fused activation
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                if getattr(module, name, None) is not None:
                    getattr(frozen, name).copy_(getattr(module, name))
        return frozen
    for name, child in module.named_children():
        new_child = freeze_batch_norm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


class Backbone(nn.Module):
    """A timm CNN returning every requested stage as `(feature_map (B, C, h, w), mask (B, h, w))`,
    mask True on valid (non-padding) pixels.

    Channel counts and strides are read from timm's `feature_info`, so any timm CNN works by name.
    """

    def __init__(
        self,
        name: str = "resnet50",
        out_indices=(1, 2, 3, 4),
        dilation: bool = False,
        pretrained: bool = False,
        in_chans: int = 3,
        freeze_batch_norm_2d: bool = True,
        trainable_stages: int = 3,
        **timm_kwargs,
    ):
        super().__init__()
        try:
            self.model = timm.create_model(
                name,
                pretrained=pretrained and not _SKIP_PRETRAINED_DOWNLOAD,
                features_only=True,
                out_indices=tuple(out_indices),
                output_stride=16 if dilation else 32,
                in_chans=in_chans,
                **timm_kwargs,
            )
        except RuntimeError as error:
            if "Unknown model" in str(error):
                raise ValueError(f"backbone {name!r} is not a timm model name") from error
            raise
        if freeze_batch_norm_2d:
            freeze_batch_norm(self.model)
        self.channels = self.model.feature_info.channels()
        self.strides = self.model.feature_info.reduction()
        self.freeze_early_stages(trainable_stages)

    @classmethod
    def from_config(cls, config):
        """Build from any config carrying DetrConfig's backbone fields (DETR and Deformable DETR share them)."""
        return cls(
            config.backbone,
            out_indices=config.backbone_out_indices,
            dilation=config.dilation,
            pretrained=config.use_pretrained_backbone,
            in_chans=config.num_channels,
            freeze_batch_norm_2d=config.freeze_backbone_batch_norm,
            trainable_stages=config.backbone_trainable_stages,
            **(config.backbone_kwargs or {}),
        )

    def freeze_early_stages(self, trainable_stages: int):
        """Freeze every top-level block that precedes the first trainable stage (the paper: stem + layer1)."""
        stage_modules = self.model.feature_info.module_name()
        if trainable_stages == 0:
            first_trainable = None
        else:
            first_trainable = stage_modules[len(stage_modules) - trainable_stages].split(".")[0]
        for name, child in self.model.named_children():
            if name == first_trainable:
                break
            child.requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if pixel_values.device.type == "cpu":
            # oneDNN convolutions run ~1.4x faster on NHWC activations (ResNet-50 at 800x1066, 2 threads)
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        features = self.model(pixel_values)
        mask = pixel_mask[None].float()
        return [(f, F.interpolate(mask, size=f.shape[-2:]).to(torch.bool)[0]) for f in features]


class ConvEncoder(nn.Module):
    """Holds the Backbone as `conv_encoder`: the attribute path under which transformers' DETR-family checkpoints
    store the CNN (`model.backbone.conv_encoder.model.*`), so those files load without renaming keys."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.conv_encoder = backbone

    def forward(self, pixel_values, pixel_mask):
        return self.conv_encoder(pixel_values, pixel_mask)
