"""The main job end to end on a tiny setting: fine-tune a (tiny) Deformable DETR checkpoint on shapes-b with a new
class head, then eval.py and predict.py on its output; and the fallback when the checkpoint is missing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TINY = dict(backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, num_feature_levels=2,
            encoder_n_points=2, decoder_n_points=2)
SMALL_RUN = ["--image-size", "64", "--max-train-samples", "4", "--max-eval-samples", "4", "--batch-size", "2",
             "--epochs", "1", "--num-workers", "0", "--log-with", "[]"]


def run(script, *args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="2", DETRKIT_DISABLE_KERNELS="1")  # no kernel build inside CI
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *map(str, args)], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def shapes_a_checkpoint(tmp_path_factory):
    """A tiny Deformable DETR with shapes-a's 12 classes, as save_pretrained writes it."""
    from detrkit.modeling import DeformableDetrForObjectDetection, config_from_preset
    from detrkit.data.builtin.shapes import builtin_categories

    labels = {i: c["name"] for i, c in enumerate(sorted(builtin_categories("shapes-a"), key=lambda c: c["id"]))}
    torch.manual_seed(0)
    model = DeformableDetrForObjectDetection(config_from_preset(
        "deformable-detr", **TINY, id2label=labels, label2id={v: k for k, v in labels.items()}))
    folder = tmp_path_factory.mktemp("ckpt") / "deformable-detr-shapes-a"
    model.save_pretrained(folder)
    return folder


def test_fine_tune_replaces_only_the_class_head_and_writes_every_output(shapes_a_checkpoint, tmp_path):
    out = tmp_path / "demo"
    # lr 0 and frozen BatchNorm (a checkpoint gets the "pretrained" backbone policy): every weight but the new
    # head must come out exactly as it went in, so nothing else was re-initialised on the way
    log = run("train.py", "--model", shapes_a_checkpoint, "--data", "shapes-b", "--data-cache", tmp_path / "data",
              "--output-dir", out, "--lr", "0", *SMALL_RUN)
    assert "new class head for 5 classes (was 12)" in log
    assert "backbone pretrained: frozen BatchNorm, 5/20 backbone tensors frozen" in log  # ResNet-18 stem + layer1

    before = load_file(shapes_a_checkpoint / "model.safetensors")
    after = load_file(out / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    heads = [k for k in after if "class_embed" in k]
    assert heads and all(after[k].shape[0] == 5 and before[k].shape[0] == 12 for k in heads)
    for name in after:
        if name not in heads:
            assert torch.equal(after[name], before[name]), f"{name} changed"

    metrics = json.loads((out / "metrics.json").read_text())
    metrics = {k: metrics[k] for k in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")}
    assert all(-1 <= v <= 1 for v in metrics.values())
    for name in ("training.png", "predictions.png", "history.jsonl", "model/config.json",
                 "model/preprocessor_config.json", "model/README.md"):
        assert (out / name).is_file(), name
    card = (out / "model" / "README.md").read_text()
    assert f"| AP | {metrics['map']:.4f} |" in card and "shapes-b" in card
    config = json.loads((out / "model" / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["arrow", "crescent", "heart", "hexagon", "ring"]

    # eval.py on the exported folder reproduces the training run's numbers
    run("eval.py", out / "model", "--data", "shapes-b", "--data-cache", tmp_path / "data", "--image-size", 64,
        "--max-samples", 4, "--output", tmp_path / "eval.json")
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    for key, value in metrics.items():
        assert evaluated[key] == pytest.approx(value, abs=1e-6), key

    # predict.py: JSON + one drawing per image
    images = sorted((tmp_path / "data").glob("shapes-b-64px/val/*.png"))[:2]
    run("predict.py", out / "model", *images, "--threshold", "0.0", "--output-dir", tmp_path / "pred")
    predictions = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert set(predictions) == {str(p) for p in images}
    first = predictions[str(images[0])][0]
    assert set(first) == {"label", "label_id", "score", "box"} and first["label"] in config["id2label"].values()
    assert all((tmp_path / "pred" / f"{p.stem}.png").is_file() for p in images)


def test_missing_shipped_checkpoint_falls_back_to_training_from_scratch(tmp_path):
    recipe = tmp_path / "tiny_recipe.yaml"
    recipe.write_text(json.dumps({"model": "deformable-detr", "model_overrides": TINY}))
    log = run("train.py", "--model", "checkpoints/not-there", "--fallback-model", recipe, "--data", "shapes-b",
              "--data-cache", tmp_path / "data", "--output-dir", tmp_path / "out", "--max-steps", "1",
              "--predictions-image", "false", "--mixed-precision", "bf16", "--gradient-accumulation-steps", "2",
              *SMALL_RUN, "--max-train-samples", "8")  # 1 step of 2 x 2 images: half an epoch
    assert "WARNING: checkpoint checkpoints/not-there not found; training deformable-detr from scratch" in log
    assert "backbone scratch: trainable BatchNorm, no backbone layer frozen" in log
    assert "mixed precision bf16" in log
    assert (tmp_path / "out" / "metrics.json").is_file() and (tmp_path / "out" / "training.png").is_file()
    history = [json.loads(line) for line in (tmp_path / "out" / "history.jsonl").open()]
    assert [(r["epoch"], r["step"]) for r in history] == [(0.5, 1)] and "map" in history[0]
