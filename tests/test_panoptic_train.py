"""`detrkit train --task panoptic|instance` (detrkit.training.segmentation and its parts): the two-step recipe end to end on tiny
built-in sets, the evaluation wiring (PQ of the ground truth itself is 1), the class rows carried over to a new
head, and the panoptic picture."""

import json

import numpy as np
import pytest
import torch
import transformers
from helpers import SMALL
from PIL import Image

from detrkit.modeling import (
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
)
from detrkit.training.panoptic_drawing import draw_panoptic
from detrkit.training.segmentation_data import load_segmentation_data
from detrkit.training.segmentation_evaluation import panoptic_metrics
from detrkit.training.segmentation_model import carry_over_class_rows
from detrkit.training.config import TrainConfig
from detrkit.training.train import main as train_main

TINY = dict(SMALL, encoder_attention_heads=8, decoder_attention_heads=8)
TINY_OVERRIDES = ("{backbone: resnet18, d_model: 32, encoder_layers: 1, decoder_layers: 2, encoder_ffn_dim: 64, "
                  "decoder_ffn_dim: 64, encoder_attention_heads: 8, decoder_attention_heads: 8, num_queries: 20, "
                  "num_feature_levels: 2}")


def _common(tmp_path, name):
    return ["--data-cache", str(tmp_path / "data"), "--builtin-num-train", "4", "--builtin-num-val", "2",
            "--image-size", "64", "--batch-size", "2", "--epochs", "1", "--max-steps", "1", "--num-workers", "0",
            "--output-dir", str(tmp_path / name), "--report-to", "[]"]


@pytest.mark.slow
@pytest.mark.e2e
def test_two_step_panoptic_run_writes_pq_model_and_picture(tmp_path):
    code = train_main(["--task", "panoptic", "--model", "deformable-detr", "--data", "shapes-a-panoptic",
                       "--set", f"model_overrides={TINY_OVERRIDES}", "--set", "detector_step={max_steps: 1}",
                       *_common(tmp_path, "run")])
    assert code == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "panoptic"
    assert {"pq", "sq", "rq", "pq_things", "pq_stuff", "per_class"} <= set(metrics)
    assert set(metrics["per_class"]) >= {"sky", "wall", "ground", "red circle"}
    assert metrics["steps"]["detector"]["optimizer_steps"] == 1 and metrics["steps"]["masks"]["optimizer_steps"] == 1
    assert (run / "detector" / "model.safetensors").exists()
    last = {}
    for step in ("detector", "masks"):  # the one training loop's history and checkpoints, per step
        last[step] = json.loads((run / "steps" / step / "history.jsonl").read_text().splitlines()[-1])
        assert last[step]["step"] == 1 and (run / "steps" / step / "checkpoints" / "index.json").exists()
    assert "loss_giou" in last["detector"] and "loss_dice" in last["masks"]
    assert (run / "panoptic.png").exists() and (run / "predictions.png").exists()
    model = transformers.AutoModelForImageSegmentation.from_pretrained(run / "model")
    assert type(model).__name__ == "DeformableDetrForSegmentation" and model.config.freeze_detector
    assert not model.config.train_matched_masks_only  # a training-time option, off in the saved model
    assert len(model.config.id2label) == 15


@pytest.mark.slow
@pytest.mark.e2e
def test_joint_instance_run_reports_mask_ap(tmp_path):
    code = train_main(["--task", "instance", "--freeze-detector", "false", "--model", "deformable-detr",
                       "--data", "shapes-a", "--set", f"model_overrides={TINY_OVERRIDES}", *_common(tmp_path, "run")])
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "instance" and 0.0 <= metrics["segm_map"] <= 1.0
    assert set(metrics["steps"]) == {"masks"}  # one joint run, no separate detector step


def test_ground_truth_as_prediction_scores_pq_1(tmp_path):
    """The evaluation wiring (label <-> category ids, stuff, PNG ground truth) gives PQ 1 to a perfect answer."""
    from detrkit.processing import DetrImageProcessor

    config = TrainConfig(task="panoptic", data="shapes-a-panoptic", data_cache=str(tmp_path), builtin_num_train=2,
                         builtin_num_val=3, image_size=64)
    data = load_segmentation_data(config, DetrImageProcessor(), log=lambda *a: None)
    predictions = {}
    for record in data.eval_records:
        ids = np.asarray(Image.open(record.panoptic_png).convert("RGB")).astype(np.int64)
        ids = ids[..., 0] + 256 * ids[..., 1] + 256 * 256 * ids[..., 2]
        to_label = {c["id"]: label for label, c in enumerate(data.categories)}
        predictions[record.image_id] = {
            "segmentation": torch.from_numpy(ids),
            "segments_info": [{"id": s["id"], "label_id": to_label[s["category_id"]], "score": 1.0}
                              for s in record.segments_info]}
    metrics = panoptic_metrics(data, predictions)
    assert metrics["pq"] == metrics["pq_things"] == metrics["pq_stuff"] == 1.0
    assert data.stuff_label_ids == {12, 13, 14}


@pytest.mark.parametrize("kind", ["detr", "deformable"])
def test_known_class_rows_carry_over_to_the_new_head(tmp_path, kind):
    config_class, model_class = ((DetrConfig, DetrForObjectDetection) if kind == "detr"
                                 else (DeformableDetrConfig, DeformableDetrForObjectDetection))
    torch.manual_seed(0)
    old = model_class(config_class(**dict(TINY, num_labels=3), id2label={0: "a", 1: "b", 2: "c"}))
    old.save_pretrained(tmp_path)
    new_labels = {0: "c", 1: "x", 2: "a", 3: "y"}
    new = model_class.from_pretrained(tmp_path, id2label=new_labels, num_labels=4, ignore_mismatched_sizes=True)
    assert carry_over_class_rows(new, tmp_path, log=lambda *a: None) == 2
    head = "class_labels_classifier" if kind == "detr" else "class_embed.0"
    old_weight, new_weight = old.get_parameter(f"{head}.weight"), new.get_parameter(f"{head}.weight")
    torch.testing.assert_close(new_weight[0], old_weight[2])  # "c"
    torch.testing.assert_close(new_weight[2], old_weight[0])  # "a"
    assert not torch.equal(new_weight[1], old_weight[1])
    if kind == "detr":  # the "no object" row
        torch.testing.assert_close(new_weight[-1], old_weight[-1])


def test_panoptic_picture_colours_each_segment():
    image = Image.new("RGB", (40, 30), "white")
    segmentation_map = torch.zeros(30, 40, dtype=torch.int64)
    segmentation_map[:, :20], segmentation_map[:, 20:] = 1, 2
    info = [{"id": 1, "label_id": 0}, {"id": 2, "label_id": 1}]
    drawn = draw_panoptic(image, segmentation_map, info, {0: "sky", 1: "wall"})
    assert drawn.dtype == torch.uint8 and drawn.shape[0] == 3 and drawn.shape[1] >= 30
    scale = drawn.shape[1] // 30
    left, right = drawn[:, 2 * scale, 2 * scale], drawn[:, 2 * scale, -2 * scale]
    assert not torch.equal(left, right)  # two segments, two colours
    assert not torch.equal(left, torch.tensor([255, 255, 255], dtype=torch.uint8))


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_config_runs_both_steps_with_the_cached_head_step(tmp_path, capsys):
    """scripts/configs/panoptic_shapes.yaml as the README runs it, cut to a few images and steps."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "scripts" / "configs" / "panoptic_shapes.yaml"
    code = train_main(["--config", str(config), "--data-cache", str(tmp_path / "data"), "--builtin-num-train", "16",
                       "--builtin-num-val", "4", "--set", "detector_step={max_steps: 1, lr: 2.0e-4}",
                       "--max-steps", "3", "--num-workers", "0", "--output-dir", str(tmp_path / "run"),
                       "--report-to", "[]"])
    assert code == 0
    assert "cached the frozen detector's outputs for 16 images" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"]["detector"]["optimizer_steps"] == 1 and metrics["steps"]["masks"]["optimizer_steps"] == 3
