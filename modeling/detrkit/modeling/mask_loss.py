"""Mask losses of DETR's panoptic training (Carion et al., 2020, section 4.4): on the queries the Hungarian matcher
assigned to a target, a sigmoid focal loss and a DICE loss between the predicted mask logits, upsampled
(bilinear) from 1/4 resolution to the targets' resolution, and the target masks. Both are normalized by the
number of target boxes, like the box losses; auxiliary decoder outputs carry no masks and get no mask loss.
"""

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """1 - (2 |P n T| + 1) / (|P| + |T| + 1) per mask (P the sigmoid probabilities), summed, / num_boxes.
    logits, targets: (N, pixels)."""
    probabilities = logits.sigmoid()
    numerator = 2 * (probabilities * targets).sum(1)
    denominator = probabilities.sum(1) + targets.sum(1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_boxes


def mask_focal_loss(logits: torch.Tensor, targets: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """RetinaNet's focal loss (alpha 0.25, gamma 2) per pixel, averaged over each mask's pixels, summed, / num_boxes."""
    return sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none").mean(1).sum() / num_boxes


def validate_masks(labels: list[dict]) -> None:
    """Each target needs "masks" (T, H, W), one per box, and all images' masks the same size (the padded batch)."""
    sizes = set()
    for i, target in enumerate(labels):
        masks = target.get("masks")
        if masks is None:
            raise ValueError(f"labels[{i}] has no 'masks' (keys: {sorted(target)}); segmentation training needs "
                             "one (H, W) mask per box")
        if not torch.is_tensor(masks) or masks.ndim != 3:
            shape = tuple(masks.shape) if torch.is_tensor(masks) else type(masks).__name__
            raise ValueError(f"labels[{i}]['masks'] must be a (num_boxes, height, width) tensor, got {shape}")
        if len(masks) != len(target["class_labels"]):
            raise ValueError(f"labels[{i}] has {len(masks)} masks but {len(target['class_labels'])} class_labels")
        sizes.add(tuple(masks.shape[-2:]))
    if len(sizes) > 1:
        raise ValueError(f"labels' masks have different sizes {sorted(sizes)}; pad them to the batch's padded "
                         "image size (the image processor does)")


def matched_predictions(pred_masks: torch.Tensor, indices) -> torch.Tensor:
    """(B, Q, h, w) mask logits -> (N, h, w) of the matched queries, image by image in the matcher's order."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(pred_masks.device)
    query_idx = torch.cat([src for src, _ in indices]).to(pred_masks.device)
    return pred_masks[batch_idx, query_idx]


def mask_losses(matched: torch.Tensor, labels: list[dict], indices, num_boxes: float) -> dict[str, torch.Tensor]:
    """matched (N, h, w): mask logits of the matched queries (`matched_predictions`); labels with "masks"
    (T, H, W); indices: the matcher's [(query indices, target indices)] per image. Returns {"loss_mask" (focal),
    "loss_dice"}, unweighted."""
    targets = torch.cat([t["masks"][tgt.to(t["masks"].device)] for t, (_, tgt) in zip(labels, indices)])
    targets = targets.to(device=matched.device, dtype=matched.dtype)
    if len(matched) == 0:  # no targets in the batch: zero losses that still reach the mask head's graph
        zero = matched.sum() * 0.0
        return {"loss_mask": zero, "loss_dice": zero}
    matched = F.interpolate(matched[:, None], size=targets.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    matched, targets = matched.flatten(1), targets.flatten(1)
    return {"loss_mask": mask_focal_loss(matched, targets, num_boxes),
            "loss_dice": dice_loss(matched, targets, num_boxes)}


__all__ = ["dice_loss", "mask_focal_loss", "mask_losses", "matched_predictions", "validate_masks"]
