"""Which ResNet an official backbone is, read from its state dict (torchvision's layout, which timm shares)."""

from .checkpoint_file import CheckpointError

# (block, blocks per stage, conv2 width of the first block / its input width per group) -> timm name
_RESNETS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


def resnet_name(state_dict, prefix: str = "backbone.0.body.") -> str:
    """The timm model name of the ResNet stored under `prefix`: block type from conv3's presence, depth from
    the number of blocks per stage. Grouped or widened variants (ResNeXt, Wide ResNet) are refused by name."""
    blocks = []
    for stage in range(1, 5):
        indices = {int(k[len(f"{prefix}layer{stage}."):].split(".")[0])
                   for k in state_dict if k.startswith(f"{prefix}layer{stage}.")}
        if not indices:
            raise CheckpointError(f"the backbone has no layer{stage} (expected a torchvision ResNet under {prefix})")
        blocks.append(max(indices) + 1)
    kind = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state_dict else "basic"
    conv2 = state_dict[f"{prefix}layer1.0.conv2.weight"]
    if kind == "bottleneck" and tuple(conv2.shape[:2]) != (64, 64):
        raise CheckpointError(f"the backbone's first 3x3 convolution has shape {tuple(conv2.shape)}: a grouped or "
                              "widened ResNet (ResNeXt / Wide ResNet), which the official code does not build")
    try:
        return _RESNETS[(kind, tuple(blocks))]
    except KeyError:
        raise CheckpointError(f"no ResNet has {kind} blocks {blocks} per stage") from None
