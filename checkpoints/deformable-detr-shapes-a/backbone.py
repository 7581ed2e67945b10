"""The backbone: any timm model with `features_only` (CNNs, hierarchical transformers), frozen BatchNorm,
early stages frozen, and the pixel mask carried to each returned stage."""

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
    the per-channel scale (less memory in a training step, and a faster pass)."""

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


def _create_features(name: str, dilation: bool, **kwargs) -> nn.Module:
    """timm's features_only model; hierarchical transformers get `dynamic_img_size` (any input size), and a
    family that cannot dilate its last stage (DC5) is refused by name."""
    create = timm.create_model  # also any model registered with timm (e.g. deformable_convolution.py's)
    if dilation:
        kwargs["output_stride"] = 16
    try:
        try:
            return create(name, features_only=True, dynamic_img_size=True, **kwargs)
        except TypeError as error:  # CNNs take any input size and do not know the argument
            if "dynamic_img_size" not in str(error):
                raise
        return create(name, features_only=True, **kwargs)
    except TypeError as error:
        if "output_stride" in str(error):
            raise ValueError(f"backbone {name!r} cannot dilate its last stage (timm has no output_stride for "
                             "it): dilation=True (DC5) needs a CNN such as resnet50") from error
        raise
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ValueError(f"backbone {name!r} is not a timm model name") from error
        raise


def _pad_to_multiple(pixel_values: torch.Tensor, pixel_mask: torch.Tensor, multiple: int):
    """Zero-pad images bottom-right to a multiple of `multiple`, the padding marked False in the mask."""
    height, width = pixel_values.shape[-2:]
    pad_bottom, pad_right = -height % multiple, -width % multiple
    if not (pad_bottom or pad_right):
        return pixel_values, pixel_mask
    return (F.pad(pixel_values, (0, pad_right, 0, pad_bottom)),
            F.pad(pixel_mask, (0, pad_right, 0, pad_bottom), value=False))


def _nominal_reductions(reductions: list[int]) -> list[int]:
    """Strides as the undilated network has them: a dilated stage repeats its predecessor's stride, which
    doubles in a hierarchical backbone."""
    nominal = []
    for reduction in reductions:
        nominal.append(nominal[-1] * 2 if nominal and reduction <= nominal[-1] else reduction)
    return nominal


class Backbone(nn.Module):
    """A timm backbone returning every requested stage as `(feature_map (B, C, h, w), mask (B, h, w))`,
    mask True on valid (non-padding) pixels.

    The stages are picked from timm's `feature_info` by stride (`strides`), unless `out_indices` names them;
    channel counts come from there too, so CNNs and hierarchical transformers (channels-last outputs, made
    channels-first here) work by name.
    """

    def __init__(
        self,
        name: str = "resnet50",
        strides=(4, 8, 16, 32),
        out_indices=None,
        dilation: bool = False,
        pretrained: bool = False,
        in_chans: int = 3,
        freeze_batch_norm_2d: bool = True,
        trainable_stages: int = 3,
        **timm_kwargs,
    ):
        super().__init__()
        if out_indices is not None:
            timm_kwargs["out_indices"] = tuple(out_indices)
        self.model = _create_features(name, dilation, pretrained=pretrained and not _SKIP_PRETRAINED_DOWNLOAD,
                                      in_chans=in_chans, **timm_kwargs)
        info = self.model.feature_info
        if out_indices is None:
            nominal = _nominal_reductions(info.reduction())
            missing = [stride for stride in strides if stride not in nominal]
            if missing:
                raise ValueError(f"backbone {name!r} has no stage of stride {missing} (its strides: {nominal}); "
                                 "set backbone_out_indices to choose its stages")
            self.selected = [nominal.index(stride) for stride in strides]
        else:
            self.selected = list(range(len(info.out_indices)))
        self.out_indices = [info.out_indices[i] for i in self.selected]  # indices into timm's full stage list
        self.channels = [info.channels()[i] for i in self.selected]
        self.strides = [info.reduction()[i] for i in self.selected]
        output_format = getattr(self.model, "output_fmt", "NCHW")  # timm's Format enum, or absent for CNNs
        self.channels_last_output = getattr(output_format, "value", output_format) == "NHWC"
        if freeze_batch_norm_2d:
            freeze_batch_norm(self.model)
        self.freeze_early_stages(trainable_stages)

    @classmethod
    def from_config(cls, config):
        """Build from any config carrying DetrBaseConfig's backbone fields (DETR and Deformable DETR share them)."""
        return cls(
            config.backbone,
            strides=config.backbone_strides,
            out_indices=config.backbone_out_indices,
            dilation=config.dilation,
            pretrained=config.use_pretrained_backbone,
            in_chans=config.num_channels,
            freeze_batch_norm_2d=config.freeze_backbone_batch_norm,
            trainable_stages=config.backbone_trainable_stages,
            **(config.backbone_kwargs or {}),
        )

    def _module_named(self, name: str) -> str:
        """timm's feature_info names modules of the full network ("stages.1"); FeatureListNet flattens the
        top levels ("stages_1")."""
        for candidate in (name, name.replace(".", "_")):
            try:
                self.model.get_submodule(candidate)
                return candidate
            except AttributeError:
                continue
        raise ValueError(f"feature_info module {name!r} is not in the timm model {type(self.model).__name__}")

    def freeze_early_stages(self, trainable_stages: int):
        """Freeze everything timm builds up to the first trainable returned stage (the paper: stem + C2), so
        `trainable_stages` of the returned stages, counted from the deepest, train. Modules are taken in the
        order timm registers them, which is the order they run."""
        self.model.requires_grad_(trainable_stages > 0)
        if trainable_stages == 0:
            return
        first_trainable = self.out_indices[-trainable_stages]
        if first_trainable == 0:
            return
        last_frozen = self._module_named(self.model.feature_info.module_name(first_trainable - 1))
        names = [name for name, _ in self.model.named_modules()]
        end = names.index(last_frozen) + 1
        while end < len(names) and names[end].startswith(last_frozen + "."):
            end += 1
        for name in names[1:end]:  # names[0] is the model itself
            for parameter in self.model.get_submodule(name).parameters(recurse=False):
                parameter.requires_grad_(False)

    def after_loading(self, trainable_stages: int):
        """What a checkpoint load undoes: loading materialises fresh Parameters (requires_grad=True) and leaves
        buffers that are not saved (e.g. Swin's relative position index) uninitialised; timm rebuilds those."""
        for module in self.model.modules():
            if callable(getattr(module, "init_non_persistent_buffers", None)):
                module.init_non_persistent_buffers()
        self.freeze_early_stages(trainable_stages)

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if pixel_values.device.type == "cpu" and not self.channels_last_output:
            # oneDNN convolutions run faster on NHWC activations
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        if self.channels_last_output:
            # patch embeddings need whole patches: pad bottom-right to the deepest stride, as padding pixels
            pixel_values, pixel_mask = _pad_to_multiple(pixel_values, pixel_mask, max(self.strides))
        features = self.model(pixel_values)
        features = [features[i] for i in self.selected]
        if self.channels_last_output:
            features = [f.permute(0, 3, 1, 2) for f in features]
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
