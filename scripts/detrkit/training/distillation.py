"""Multi-task knowledge distillation (MTKD; Zheng et al., ACT, BMVC 2021): a trained exact DETR teaches a student
whose encoder runs adaptive clustering attention, through its predictions and its encoder features.

`detrkit train --model <DETR checkpoint> --set model_overrides.encoder_attention_type=act --distill-from <same
checkpoint>` fine-tunes the ACT student with

    L = L_gt + w_pred * L_pred + w_feat * L_feat

- L_gt: the usual set loss against the data's boxes (the student keeps learning the task);
- L_pred (prediction distillation): the same set loss with the teacher's predictions as targets. Each teacher query
  whose most likely class is an object becomes a target (that class, the teacher's box); the Hungarian matcher pairs
  them with the student's queries, then cross-entropy + L1 + GIoU with the model's own weights (DETR: 1, 5, 2; "no
  object" down-weighted by eos_coefficient), auxiliary decoder layers included;
- L_feat (feature distillation): mean squared error between the student's and the teacher's encoder outputs, every
  encoder layer, over real (unpadded) pixels: the encoder is where ACT approximates, so that is where the student
  is told what the exact attention would have produced.

Weights: w_pred = w_feat = 1. The official repository ships no MTKD code, so these are this package's choice, made
to keep each term on the scale of the task loss: L_pred reuses the task loss's own coefficients, and the encoder
outputs are layer-normalised (unit scale per element), so an unweighted per-element MSE is comparable to the box
terms. Both are arguments of `Distiller` for other choices.
"""
from __future__ import annotations

from pathlib import Path

import torch

PREDICTION_WEIGHT = 1.0
FEATURE_WEIGHT = 1.0


def load_teacher(spec: str, device) -> torch.nn.Module:
    """The exact DETR, frozen and in eval mode (its dropout off: it must give the same targets every time)."""
    import detrkit.modeling  # noqa: F401  (registers detrkit's configs with the Auto classes)
    from transformers import AutoModelForObjectDetection

    local = Path(spec).expanduser()
    source, remote = (str(local), {}) if (local / "config.json").exists() else (spec, {"trust_remote_code": True})
    teacher = AutoModelForObjectDetection.from_pretrained(source, **remote).to(device)
    if getattr(teacher.config, "encoder_attention_type", "standard") != "standard":
        raise ValueError(f"--distill-from {spec}: the teacher must use exact attention, but its config has "
                         f"encoder_attention_type={teacher.config.encoder_attention_type!r}")
    return teacher.requires_grad_(False).eval()


def teacher_targets(logits: torch.Tensor, boxes: torch.Tensor) -> list[dict]:
    """Teacher outputs (B, Q, C + 1), (B, Q, 4) -> one target per query predicted as an object (transformers'
    label format: class_labels, normalized cxcywh boxes)."""
    classes = logits.argmax(-1)
    is_object = classes < logits.shape[-1] - 1  # the last class is "no object"
    return [{"class_labels": c[keep], "boxes": b[keep]} for c, b, keep in zip(classes, boxes, is_object)]


def feature_loss(student: tuple, teacher: tuple, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over encoder layers of the per-element MSE on real pixels; hidden states (input, layer 1..L), each
    (B, HW, D); valid (B, HW) bool or None."""
    losses = []
    for s, t in zip(student[1:], teacher[1:]):
        error = (s - t).pow(2).mean(-1)  # (B, HW)
        losses.append(error.mean() if valid is None else error[valid].mean())
    return torch.stack(losses).mean()


class Distiller:
    """Runs student and teacher on a batch and returns the student's outputs with the MTKD loss as `loss` (and its
    terms in `loss_dict`: loss_gt, loss_distill_pred, loss_distill_feat)."""

    def __init__(self, teacher: torch.nn.Module, student: torch.nn.Module,
                 prediction_weight: float = PREDICTION_WEIGHT, feature_weight: float = FEATURE_WEIGHT):
        from detrkit.modeling.loss import SetCriterion

        check_compatible(teacher.config, student.config)
        self.teacher = teacher
        self.criterion = SetCriterion.from_config(student.config)
        self.auxiliary_loss = student.config.auxiliary_loss
        self.prediction_weight = prediction_weight
        self.feature_weight = feature_weight
        self._mask = None
        # the C5 padding mask, as the student's backbone computes it, for the feature loss
        student.model.backbone.register_forward_hook(self._keep_mask)

    def _keep_mask(self, module, inputs, output):
        self._mask = output[-1][1].flatten(1)  # (B, hw) True on real pixels

    def __call__(self, model: torch.nn.Module, batch: dict):
        from detrkit.modeling.loss import compute_set_loss

        with torch.no_grad():
            teacher = self.teacher(pixel_values=batch["pixel_values"], pixel_mask=batch.get("pixel_mask"),
                                   output_hidden_states=True)
        outputs = model(**batch, output_hidden_states=True)
        predictions = {"logits": outputs.logits, "pred_boxes": outputs.pred_boxes}
        if self.auxiliary_loss and outputs.auxiliary_outputs is not None:
            predictions["auxiliary_outputs"] = outputs.auxiliary_outputs
        targets = teacher_targets(teacher.logits, teacher.pred_boxes)
        loss_pred, _ = compute_set_loss(self.criterion, predictions, targets)
        loss_feat = feature_loss(outputs.encoder_hidden_states, teacher.encoder_hidden_states, self._mask)
        loss_gt = outputs.loss
        outputs.loss = loss_gt + self.prediction_weight * loss_pred + self.feature_weight * loss_feat
        outputs.loss_dict = {**(outputs.loss_dict or {}), "loss_gt": loss_gt.detach(),
                             "loss_distill_pred": loss_pred.detach(), "loss_distill_feat": loss_feat.detach()}
        return outputs

    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        """The training loop's loss function (task.py): the MTKD loss and its terms."""
        outputs = self(model, batch)
        return outputs.loss, outputs.loss_dict


def check_compatible(teacher_config, student_config) -> None:
    """Teacher targets are class ids and features of the student's own label set and width."""
    teacher_labels = {int(k): v for k, v in teacher_config.id2label.items()}
    student_labels = {int(k): v for k, v in student_config.id2label.items()}
    if teacher_labels != student_labels:
        raise ValueError(f"--distill-from: the teacher's classes {sorted(teacher_labels.values())} differ from the "
                         f"student's {sorted(student_labels.values())}; distil on the teacher's own data")
    for name in ("d_model", "encoder_layers"):
        if getattr(teacher_config, name) != getattr(student_config, name):
            raise ValueError(f"--distill-from: teacher and student differ in {name} ({getattr(teacher_config, name)}"
                             f" vs {getattr(student_config, name)}); feature distillation needs the same encoder")


def build_distiller(spec: str | None, student: torch.nn.Module, device, log=print) -> Distiller | None:
    """The `--distill-from` loss of the detection task (None when not distilling)."""
    if not spec:
        return None
    if not hasattr(student, "model") or not hasattr(student.model, "encoder"):
        raise ValueError("--distill-from works for DETR students (an encoder whose attention ACT replaces)")
    teacher = load_teacher(spec, device)
    kind = getattr(student.config, "encoder_attention_type", "standard")
    log(f"MTKD: teacher {spec} (exact attention), student encoder attention {kind!r}; loss = L_gt + "
        f"{PREDICTION_WEIGHT:g} L_pred + {FEATURE_WEIGHT:g} L_feat")
    return Distiller(teacher, student)
