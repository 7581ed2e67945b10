"""Hungarian matching between predictions and ground truth (DETR section 3.1, equation 1)."""

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to target boxes minimizing
    `class_cost * C_class + bbox_cost * L1(boxes) + giou_cost * (-GIoU)`.

    C_class is -p(class) with a softmax over classes + "no object" (DETR), or, with `use_focal_loss`, the focal
    loss of the target class on sigmoid probabilities, positive minus negative term (Deformable DETR).
    Unmatched queries are "no object". Boxes are normalized (cx, cy, w, h).
    """

    def __init__(
        self,
        class_cost: float = 1,
        bbox_cost: float = 1,
        giou_cost: float = 1,
        use_focal_loss: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if class_cost == 0 and bbox_cost == 0 and giou_cost == 0:
            raise ValueError("all matching costs are 0: nothing to match on")
        self.class_cost = class_cost
        self.bbox_cost = bbox_cost
        self.giou_cost = giou_cost
        self.use_focal_loss = use_focal_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def _class_cost(self, logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """logits (Q, C) -> cost (Q, T)."""
        if not self.use_focal_loss:
            return -logits.softmax(-1)[:, target_ids]
        prob = logits.sigmoid()[:, target_ids]
        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
        pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
        return pos - neg

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """outputs: "logits" (B, Q, C), "pred_boxes" (B, Q, 4); targets: per image "class_labels" (T,), "boxes" (T, 4).

        Returns per image (query indices, target indices), both int64 of length min(Q, T).
        """
        indices = []
        for logits, boxes, target in zip(outputs["logits"], outputs["pred_boxes"], targets):
            target_ids, target_boxes = target["class_labels"], target["boxes"]
            if len(target_ids) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost = (
                self.bbox_cost * torch.cdist(boxes, target_boxes.to(boxes.dtype), p=1)
                + self.class_cost * self._class_cost(logits, target_ids)
                - self.giou_cost
                * generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy"))
            )
            # a diverged prediction (NaN/inf box) should lose every match, not crash the assignment
            max_value = torch.finfo(cost.dtype).max
            cost = torch.nan_to_num(cost, nan=max_value, posinf=max_value, neginf=max_value)
            rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
