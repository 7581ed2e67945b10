"""Denoising queries (DN-DETR, Li et al. 2022; contrastive denoising, DINO, Zhang et al. 2023).

In training, noised copies of the ground truth enter the decoder as extra queries (content: the embedding of a
possibly flipped label; position: a jittered box) and must reconstruct their box and label. Their targets are
known, so no matching is needed: they give the decoder a stable, dense signal from the first step, which is why
DETR-family models then converge in a fraction of the epochs. DINO adds negatives: copies noised further, which
must predict "no object", teaching the model to reject near-misses.

The queries come in groups; group g holds S = (2 if contrastive else 1) * n_max queries, n_max being the most boxes
of one image in the batch: query g*S + j reconstructs target j of its image, and query g*S + S/2 + j is its
negative. Slots past an image's own boxes are padding. The random draws follow the authors' code in order and
kind, so a seeded run equals theirs.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import box_convert


@dataclass
class DenoisingQueries:
    """content (B, P, C) label embeddings; boxes (B, P, 4) noised normalized cxcywh; P = groups * group_size."""

    content: torch.Tensor
    boxes: torch.Tensor
    groups: int
    group_size: int
    contrastive: bool

    def __len__(self) -> int:
        return self.content.shape[1]

    def layout(self) -> dict:
        """What the set loss needs to pair each denoising query with its target."""
        return {"groups": self.groups, "group_size": self.group_size, "contrastive": self.contrastive}


def num_groups(config, max_boxes: int) -> int:
    """DN-DETR's fixed `denoising_groups`, else DINO's budget: num_denoising positive queries per image."""
    if config.denoising_groups > 0:
        return config.denoising_groups
    return max(1, config.num_denoising // max_boxes) if max_boxes else 1


def build_denoising_queries(labels: list[dict], config, label_embedding: nn.Embedding) -> DenoisingQueries:
    """labels: per image {"class_labels" (T,), "boxes" (T, 4) normalized cxcywh}, as the set loss takes them."""
    counts = [len(t["class_labels"]) for t in labels]
    max_boxes, contrastive = max(counts, default=0), config.contrastive_denoising
    groups = num_groups(config, max_boxes)
    copies = groups * (2 if contrastive else 1)  # a contrastive group is a positive and a negative copy
    classes = torch.cat([t["class_labels"] for t in labels]).repeat(copies)
    boxes = torch.cat([t["boxes"] for t in labels]).to(label_embedding.weight.dtype).repeat(copies, 1)
    if contrastive:
        classes = flip_labels(classes, config.label_noise_ratio * 0.5, config.num_labels)
        boxes = jitter_corners(boxes, config.box_noise_scale, counts, groups)
    else:
        classes = flip_labels(classes, config.label_noise_ratio, config.num_labels)
        boxes = jitter_centres_and_sizes(boxes, config.box_noise_scale)

    batch_size, slots = len(labels), copies * max_boxes
    image = torch.cat([torch.full((n,), i) for i, n in enumerate(counts)]).repeat(copies)
    slot = torch.cat([torch.arange(n) for n in counts])
    slot = torch.cat([slot + max_boxes * c for c in range(copies)])
    device = label_embedding.weight.device
    content = label_embedding.weight.new_zeros(batch_size, slots, label_embedding.embedding_dim)
    padded_boxes = label_embedding.weight.new_full((batch_size, slots, 4), 0.5)  # the authors' zero logits
    content[image.to(device), slot.to(device)] = label_embedding(classes.to(device))
    padded_boxes[image.to(device), slot.to(device)] = boxes.to(device)
    return DenoisingQueries(content, padded_boxes, groups, slots // groups, contrastive)


def flip_labels(classes: torch.Tensor, probability: float, num_classes: int) -> torch.Tensor:
    """Each label becomes a uniformly drawn class with this probability."""
    if probability <= 0:
        return classes
    chosen = torch.nonzero(torch.rand_like(classes.float()) < probability).view(-1)
    return classes.scatter(0, chosen, torch.randint_like(chosen, 0, num_classes).to(classes.dtype))


def jitter_corners(boxes: torch.Tensor, scale: float, counts: list[int], groups: int) -> torch.Tensor:
    """DINO: every corner moves by up to scale * half the box's size (positives, first copy of a group) or by
    between 1x and 2x that (negatives, second copy), in a random direction."""
    if scale <= 0:
        return boxes
    num_boxes = sum(counts)
    corners = box_convert(boxes, "cxcywh", "xyxy")
    half_size = boxes[:, 2:].repeat(1, 2) / 2
    sign = torch.randint_like(boxes, low=0, high=2, dtype=torch.float32).to(boxes.dtype) * 2.0 - 1.0
    magnitude = torch.rand_like(boxes)
    negatives = torch.cat([torch.arange(num_boxes) + (2 * g + 1) * num_boxes for g in range(groups)])
    magnitude[negatives.to(boxes.device)] += 1.0
    corners = (corners + magnitude * sign * half_size * scale).clamp(min=0.0, max=1.0)
    return box_convert(corners, "xyxy", "cxcywh")


def jitter_centres_and_sizes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """DN-DETR: the centre moves by up to scale * half the size, the size changes by up to scale times itself."""
    if scale <= 0:
        return boxes
    spread = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:]], -1)
    return (boxes + (torch.rand_like(boxes) * 2 - 1.0) * spread * scale).clamp(min=0.0, max=1.0)


def denoising_self_attention_mask(num_denoising: int, groups: int, num_object: int, num_one_to_many: int = 0,
                                  device=None) -> torch.Tensor:
    """(N, N) bool, True where a query may attend, over the decoder's queries in order [denoising groups |
    object | one-to-many]. Object queries must not see the ground truth the denoising queries carry, nor one
    group another's copy of it; one-to-many queries see only themselves (H-DETR). Denoising queries see their own
    group and the object queries (DINO)."""
    total = num_denoising + num_object + num_one_to_many
    block = torch.arange(total, device=device)
    group_size = num_denoising // groups if num_denoising else 1
    # a block id per query: each denoising group, then the object and the one-to-many queries
    block = torch.where(block < num_denoising, block // group_size,
                        torch.where(block < num_denoising + num_object, groups, groups + 1))
    allowed = block[:, None] == block[None, :]
    allowed[:num_denoising, num_denoising:num_denoising + num_object] = True
    return allowed

