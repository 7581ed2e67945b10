"""Set prediction loss shared by DETR and Deformable DETR (DETR section 3.1, equation 2).

After Hungarian matching, matched queries are supervised with a classification loss and box losses (L1 and
GIoU), unmatched ones with the "no object" class. Classification is either cross-entropy over classes +
"no object", down-weighted by `eos_coefficient` (DETR), or a sigmoid focal loss without a "no object" logit
(Deformable DETR). The same losses are applied to every auxiliary decoder output and, for two-stage Deformable
DETR, to the encoder proposals ("enc_outputs", matched class-agnostically).

Training-only extras the model may hand over: denoising queries ("denoising", DN-DETR / DINO), which reconstruct
known targets at fixed positions and so need no matching, and H-DETR's one-to-many queries ("one_to_many"),
matched to every target repeated `k_one_to_many` times. `classification_loss="varifocal"` replaces the focal
loss by RT-DETR's IoU-aware varifocal loss.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_area, box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from .matcher import HungarianMatcher


def validate_labels(labels, batch_size: int, num_classes: int):
    """Raise a ValueError naming the image and field when `labels` are not transformers-style targets:
    a list of `batch_size` dicts with "class_labels" (T,) int64 in [0, num_classes) and "boxes" (T, 4) float,
    normalized (cx, cy, w, h) with non-negative sizes."""
    if not isinstance(labels, (list, tuple)):
        raise ValueError(f"labels must be a list of dicts (one per image), got {type(labels).__name__}")
    if len(labels) != batch_size:
        raise ValueError(f"labels has {len(labels)} entries but the batch has {batch_size} images")
    for i, target in enumerate(labels):
        for key in ("class_labels", "boxes"):
            if key not in target:
                raise ValueError(f"labels[{i}] has no {key!r} (keys: {sorted(target)})")
        classes, boxes = target["class_labels"], target["boxes"]
        if not torch.is_tensor(classes) or classes.ndim != 1 or classes.is_floating_point():
            raise ValueError(f"labels[{i}]['class_labels'] must be a 1-D integer tensor, got {classes!r}")
        if not torch.is_tensor(boxes) or boxes.ndim != 2 or boxes.shape[-1] != 4:
            shape = tuple(boxes.shape) if torch.is_tensor(boxes) else type(boxes).__name__
            raise ValueError(f"labels[{i}]['boxes'] must be a (num_boxes, 4) tensor, got {shape}")
        if len(classes) != len(boxes):
            raise ValueError(f"labels[{i}] has {len(classes)} class_labels but {len(boxes)} boxes")
        if len(classes) == 0:
            continue
        out_of_range = (classes < 0) | (classes >= num_classes)
        if out_of_range.any():
            raise ValueError(
                f"labels[{i}]['class_labels'] has class id {int(classes[out_of_range][0])} outside "
                f"[0, {num_classes}) (num_labels={num_classes})"
            )
        bad = ~torch.isfinite(boxes).all(-1)
        if bad.any():
            raise ValueError(f"labels[{i}]['boxes'] box {int(bad.nonzero()[0])} has a non-finite value")
        bad = (boxes[:, 2:] < 0).any(-1)
        if bad.any():
            raise ValueError(
                f"labels[{i}]['boxes'] box {int(bad.nonzero()[0])} has a negative width or height; "
                "boxes must be normalized (cx, cy, w, h)"
            )


def _average_across_processes(num_boxes: float, device) -> float:
    """Mean number of target boxes per process: every process normalizes by the same count. The total is clamped
    to at least 1 before dividing (the authors' code clamps the mean), so that a step with fewer boxes than
    processes gives the gradient of one process with the whole batch, not a fraction of it."""
    count = torch.as_tensor([num_boxes], dtype=torch.float, device=device)
    world_size = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        world_size = torch.distributed.get_world_size()
    return (count.clamp(min=1) / world_size).item()


class SetCriterion(nn.Module):
    """Matches each output set to the targets and returns the unweighted losses:
    "loss_ce", "loss_bbox", "loss_giou" and the logged (non-differentiable) "cardinality_error", with suffix
    "_i" for auxiliary output i and "_enc" for encoder proposals; "_dn" / "_dn_i" for denoising queries and
    "_one2many" appended for one-to-many queries. `weighted_total` combines them."""

    # RT-DETR's varifocal loss settings (RTDetrConfig focal_loss_alpha / focal_loss_gamma)
    varifocal_alpha = 0.75
    varifocal_gamma = 2.0

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        class_loss_coefficient: float = 1.0,
        bbox_loss_coefficient: float = 5.0,
        giou_loss_coefficient: float = 2.0,
        eos_coefficient: float = 0.1,
        use_focal_loss: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        classification_loss: str = "focal",
        k_one_to_many: int = 6,
        lambda_one_to_many: float = 1.0,
    ):
        super().__init__()
        if classification_loss not in ("focal", "varifocal"):
            raise ValueError(f"classification_loss must be 'focal' or 'varifocal', got {classification_loss!r}")
        if classification_loss == "varifocal" and not use_focal_loss:
            raise ValueError("the varifocal loss needs sigmoid classification (use_focal_loss=True)")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = {
            "loss_ce": class_loss_coefficient,
            "loss_bbox": bbox_loss_coefficient,
            "loss_giou": giou_loss_coefficient,
        }
        self.use_focal_loss = use_focal_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.classification = classification_loss if use_focal_loss else "cross_entropy"
        self.k_one_to_many = k_one_to_many
        self.lambda_one_to_many = lambda_one_to_many
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coefficient
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    @classmethod
    def from_config(cls, config, use_focal_loss: bool = False):
        """Costs and coefficients under transformers' config names (DetrConfig, DeformableDetrConfig)."""
        focal_alpha = getattr(config, "focal_alpha", 0.25)
        matcher = HungarianMatcher(
            config.class_cost, config.bbox_cost, config.giou_cost, use_focal_loss=use_focal_loss, focal_alpha=focal_alpha
        )
        return cls(
            config.num_labels,
            matcher,
            class_loss_coefficient=getattr(config, "class_loss_coefficient", 1.0),
            bbox_loss_coefficient=config.bbox_loss_coefficient,
            giou_loss_coefficient=config.giou_loss_coefficient,
            eos_coefficient=getattr(config, "eos_coefficient", 0.1),
            use_focal_loss=use_focal_loss,
            focal_alpha=focal_alpha,
            # the modern training fields; a config without them (e.g. transformers' own) gets the plain criterion
            classification_loss=getattr(config, "classification_loss", "focal") if use_focal_loss else "focal",
            k_one_to_many=getattr(config, "k_one_to_many", 6),
            lambda_one_to_many=getattr(config, "lambda_one_to_many", 1.0),
        )

    def loss_labels(self, outputs, targets, indices, num_boxes, classification=None):
        logits = outputs["logits"]
        batch_idx, query_idx = _matched_queries(indices)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch_idx, query_idx] = torch.cat([t["class_labels"][j] for t, (_, j) in zip(targets, indices)])
        classification = classification or self.classification
        if classification == "cross_entropy":
            return F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.dtype))
        # one-hot over num_classes + 1 then drop the "no object" column: unmatched queries get all-zero targets
        onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(logits.dtype)
        if classification == "focal":
            return sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, reduction="sum") / num_boxes
        return self.loss_varifocal(logits, outputs["pred_boxes"], onehot, targets, indices, num_boxes)

    def loss_varifocal(self, logits, pred_boxes, onehot, targets, indices, num_boxes):
        """RT-DETR's VFL: a matched query's target for its class is its (detached) IoU with the box, so the score
        ranks localization quality; negatives are down-weighted by alpha * p^gamma as in the focal loss."""
        batch_idx, query_idx = _matched_queries(indices)
        src = pred_boxes[batch_idx, query_idx].detach()
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src.dtype)
        iou = torch.zeros(logits.shape[:2], dtype=logits.dtype, device=logits.device)
        iou[batch_idx, query_idx] = _paired_iou(src, tgt).to(logits.dtype)
        score = iou.unsqueeze(-1) * onehot
        prob = logits.detach().sigmoid()
        weight = (self.varifocal_alpha * prob.pow(self.varifocal_gamma) * (1 - onehot) + score).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, score, weight=weight, reduction="sum") / num_boxes

    @torch.no_grad()
    def cardinality_error(self, logits, targets):
        """|number of predicted objects - number of targets|, averaged over images; for logging only."""
        if self.use_focal_loss:
            num_predicted = (logits.sigmoid().amax(-1) > 0.5).sum(1)
        else:
            num_predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        num_targets = torch.as_tensor([len(t["class_labels"]) for t in targets], device=logits.device)
        return F.l1_loss(num_predicted.float(), num_targets.float())

    def loss_boxes(self, pred_boxes, targets, indices, num_boxes):
        batch_idx, query_idx = _matched_queries(indices)
        src = pred_boxes[batch_idx, query_idx]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src.dtype)
        loss_bbox = F.l1_loss(src, tgt, reduction="sum") / num_boxes
        loss_giou = generalized_box_iou_loss(
            box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"), reduction="sum"
        )
        return loss_bbox, loss_giou / num_boxes

    def _losses_for(self, outputs, targets, num_boxes, suffix="", classification=None):
        indices = self.matcher(outputs, targets)
        loss_bbox, loss_giou = self.loss_boxes(outputs["pred_boxes"], targets, indices, num_boxes)
        return {
            f"loss_ce{suffix}": self.loss_labels(outputs, targets, indices, num_boxes, classification),
            f"loss_bbox{suffix}": loss_bbox,
            f"loss_giou{suffix}": loss_giou,
            f"cardinality_error{suffix}": self.cardinality_error(outputs["logits"], targets),
        }

    def _denoising_losses(self, outputs, targets, indices, num_boxes, suffix):
        """Denoising queries reconstruct known targets at fixed positions (`indices`): no matching (DN-DETR)."""
        logits, boxes = outputs["logits"], outputs["pred_boxes"]
        if sum(len(queries) for queries, _ in indices) == 0:
            # no boxes in the batch: zero losses that still reach every dn output, so that every process
            # returns the same loss names and DDP sees a gradient for every parameter used
            zero = boxes.sum() * 0
            return {f"loss_ce{suffix}": logits.sum() * 0, f"loss_bbox{suffix}": zero, f"loss_giou{suffix}": zero}
        loss_bbox, loss_giou = self.loss_boxes(boxes, targets, indices, num_boxes)
        if self.use_focal_loss:
            # every other dn query, contrastive negative or padding, is "no object" (DINO)
            loss_ce = self.loss_labels(outputs, targets, indices, num_boxes)
        else:
            # softmax models learn only the reconstructed classes from the positive dn queries (DN-DETR)
            batch_idx, query_idx = _matched_queries(indices)
            classes = torch.cat([t["class_labels"][j] for t, (_, j) in zip(targets, indices)])
            loss_ce = F.cross_entropy(logits[batch_idx, query_idx], classes, self.empty_weight.to(logits.dtype))
        return {f"loss_ce{suffix}": loss_ce, f"loss_bbox{suffix}": loss_bbox, f"loss_giou{suffix}": loss_giou}

    def _denoising(self, denoising, targets, num_boxes):
        """Query g * group_size + j of the dn set reconstructs target j (DINO's dn_pos_idx); normalized by
        num_boxes * groups as every group repeats every target."""
        groups, size = denoising["groups"], denoising["group_size"]
        indices = []
        for target in targets:
            j = torch.arange(len(target["class_labels"]), device=target["class_labels"].device)
            offsets = torch.arange(groups, device=j.device).unsqueeze(1) * size
            indices.append(((offsets + j).flatten(), j.repeat(groups)))
        num_boxes = num_boxes * groups
        losses = self._denoising_losses(denoising, targets, indices, num_boxes, "_dn")
        for i, aux in enumerate(denoising.get("auxiliary_outputs") or []):
            losses.update(self._denoising_losses(aux, targets, indices, num_boxes, f"_dn_{i}"))
        return losses

    def _one_to_many(self, outputs, targets):
        """H-DETR's hybrid matching: the extra queries are matched one-to-one to every target repeated
        k_one_to_many times, so each target is assigned k queries."""
        k = self.k_one_to_many
        repeated = [
            {**t, "class_labels": t["class_labels"].repeat(k), "boxes": t["boxes"].repeat(k, 1)} for t in targets
        ]
        num_boxes = _average_across_processes(sum(len(t["class_labels"]) for t in repeated), outputs["logits"].device)
        losses = self._losses_for(outputs, repeated, num_boxes)
        for i, aux in enumerate(outputs.get("auxiliary_outputs") or []):
            losses.update(self._losses_for(aux, repeated, num_boxes, suffix=f"_{i}"))
        return {f"{name}_one2many": value for name, value in losses.items()}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """outputs: "logits", "pred_boxes", optional "auxiliary_outputs" (list of such dicts), "enc_outputs",
        "denoising" (also "groups" and "group_size") and "one_to_many"."""
        num_boxes = sum(len(t["class_labels"]) for t in targets)
        num_boxes = _average_across_processes(num_boxes, outputs["logits"].device)
        losses = self._losses_for(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("auxiliary_outputs") or []):
            losses.update(self._losses_for(aux, targets, num_boxes, suffix=f"_{i}"))
        if outputs.get("enc_outputs") is not None:
            # proposals are class-agnostic: every target counts as class 0 (Deformable DETR, two-stage); they keep
            # the focal loss under varifocal too, as the proposals only rank objectness for query selection
            binary = [{**t, "class_labels": torch.zeros_like(t["class_labels"])} for t in targets]
            classification = "focal" if self.classification == "varifocal" else None
            losses.update(self._losses_for(outputs["enc_outputs"], binary, num_boxes, "_enc", classification))
        if outputs.get("denoising") is not None:
            losses.update(self._denoising(outputs["denoising"], targets, num_boxes))
        if outputs.get("one_to_many") is not None:
            losses.update(self._one_to_many(outputs["one_to_many"], targets))
        return losses

    def weighted_total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of coefficient x loss over every output set: the coefficient of the name's prefix ("loss_ce",
        "loss_bbox", "loss_giou"), times lambda_one_to_many for one-to-many terms; cardinality_error carries none."""
        total = 0.0
        for name, value in losses.items():
            base = next((b for b in self.weight_dict if name == b or name.startswith(b + "_")), None)
            if base is None:
                continue
            weight = self.weight_dict[base] * (self.lambda_one_to_many if name.endswith("_one2many") else 1.0)
            total = total + weight * value
        return total


def _matched_queries(indices):
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx, query_idx


def _paired_iou(boxes1, boxes2):
    """IoU of boxes1[i] with boxes2[i] (cx, cy, w, h); the diagonal of torchvision's box_iou without its N x N."""
    boxes1, boxes2 = box_convert(boxes1, "cxcywh", "xyxy"), box_convert(boxes2, "cxcywh", "xyxy")
    overlap = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    intersection = overlap.prod(-1)
    union = box_area(boxes1) + box_area(boxes2) - intersection
    return intersection / union.clamp(min=torch.finfo(union.dtype).tiny)


def compute_set_loss(criterion: SetCriterion, outputs: dict, labels: list[dict]):
    """Validate `labels`, run the criterion on `outputs` and return (weighted total loss, loss dict)."""
    validate_labels(labels, outputs["logits"].shape[0], criterion.num_classes)
    device = outputs["logits"].device
    labels = [{**t, "boxes": t["boxes"].to(device), "class_labels": t["class_labels"].to(device)} for t in labels]
    loss_dict = criterion(outputs, labels)
    return criterion.weighted_total(loss_dict), loss_dict
