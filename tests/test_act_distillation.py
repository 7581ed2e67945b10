"""MTKD (training/distillation.py): the teacher's predictions become targets, the feature loss vanishes exactly when
the student equals the teacher, gradients reach the student only, and `detrkit train --distill-from` runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SMALL, padded_batch, random_labels

from detrkit.modeling import DetrConfig, DetrForObjectDetection
from detrkit.training.distillation import Distiller, check_compatible, feature_loss, teacher_targets

ID2LABEL = {i: f"class_{i}" for i in range(SMALL["num_labels"])}


def test_teacher_targets_keep_object_queries_only():
    logits = torch.tensor([[[5.0, 0, 0, 0, 0], [0, 0, 0, 0, 9.0], [0, 0, 3.0, 0, 0]]])  # last class: no object
    boxes = torch.rand(1, 3, 4)
    (target,) = teacher_targets(logits, boxes)
    assert target["class_labels"].tolist() == [0, 2]
    assert torch.equal(target["boxes"], boxes[0, [0, 2]])


def test_feature_loss_counts_real_pixels_only():
    zeros = (torch.zeros(1, 3, 2),) * 2
    student = (zeros[0], torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]]))
    valid = torch.tensor([[True, True, False]])
    assert feature_loss(student, zeros, valid).item() == pytest.approx((1 + 9) / 2)


def _teacher_and_student(tmp_path, bucket_width):
    torch.manual_seed(0)
    teacher = DetrForObjectDetection(DetrConfig(**dict(SMALL, auxiliary_loss=True, encoder_layers=2),
                                                id2label=ID2LABEL)).eval()
    teacher.save_pretrained(tmp_path)
    student = DetrForObjectDetection.from_pretrained(tmp_path, encoder_attention_type="act",
                                                     act_bucket_width=bucket_width, act_hash_rounds=4)
    return teacher.requires_grad_(False), student.eval()  # eval: no dropout, so lossless ACT is the teacher


def test_lossless_student_has_zero_feature_loss_and_teacher_targets(tmp_path):
    teacher, student = _teacher_and_student(tmp_path, bucket_width=1e-7)
    pixel_values, pixel_mask = padded_batch()
    batch = {"pixel_values": pixel_values, "pixel_mask": pixel_mask,
             "labels": random_labels(2, SMALL["num_labels"], counts=[2, 1])}
    outputs = Distiller(teacher, student)(student, batch)
    assert outputs.loss_dict["loss_distill_feat"].item() < 1e-10
    assert torch.isclose(outputs.loss, outputs.loss_dict["loss_gt"] + outputs.loss_dict["loss_distill_pred"])


def test_gradients_reach_the_student_not_the_teacher(tmp_path):
    teacher, student = _teacher_and_student(tmp_path, bucket_width=8.0)
    student.train()
    pixel_values, pixel_mask = padded_batch()
    batch = {"pixel_values": pixel_values, "pixel_mask": pixel_mask,
             "labels": random_labels(2, SMALL["num_labels"])}
    outputs = Distiller(teacher, student, prediction_weight=0.0)(student, batch)
    loss_feat = outputs.loss_dict["loss_distill_feat"]
    assert loss_feat.item() > 0  # clustering approximates: there is something to distil
    outputs.loss.backward()
    q_proj = student.model.encoder.layers[0].self_attn.q_proj.weight
    assert q_proj.grad is not None and q_proj.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_incompatible_teacher_is_named():
    config = DetrConfig(**SMALL, id2label=ID2LABEL)
    other = DetrConfig(**SMALL, id2label={i: f"other_{i}" for i in range(SMALL["num_labels"])})
    with pytest.raises(ValueError, match="classes"):
        check_compatible(config, other)
    with pytest.raises(ValueError, match="d_model"):
        check_compatible(config, DetrConfig(**dict(SMALL, d_model=64), id2label=ID2LABEL))


@pytest.mark.slow
@pytest.mark.e2e
def test_train_cli_distills_an_act_student(tmp_path):
    """Two optimizer steps of `detrkit train --distill-from` on a tiny teacher trained on nothing: the loop logs the
    MTKD terms and exports the ACT student."""
    torch.manual_seed(0)
    teacher_dir = tmp_path / "teacher"
    names = ["ring", "hexagon", "arrow", "heart", "crescent"]  # shapes-b's classes: the teacher keeps its head
    DetrForObjectDetection(DetrConfig(**dict(SMALL, num_labels=len(names)), id2label=dict(enumerate(names)))
                           ).save_pretrained(teacher_dir)
    command = [sys.executable, "-m", "detrkit", "train", "--model", str(teacher_dir),
               "--set", "model_overrides={encoder_attention_type: act, act_hash_rounds: 8}",
               "--distill-from", str(teacher_dir), "--data", "shapes-b", "--data-cache", str(tmp_path / "data"),
               "--image-size", "64", "--max-train-samples", "4", "--max-eval-samples", "2", "--batch-size", "2",
               "--epochs", "1", "--max-steps", "2", "--eval-every", "0", "--report-to", "[]",
               "--predictions-image", "false", "--num-workers", "0", "--output-dir", str(tmp_path / "run")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "MTKD: teacher" in result.stdout + result.stderr
    exported = DetrConfig.from_pretrained(tmp_path / "run" / "model")
    assert exported.encoder_attention_type == "act" and exported.act_hash_rounds == 8
