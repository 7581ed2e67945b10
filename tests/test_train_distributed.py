"""Two CPU processes (gloo, `accelerate launch`) reach the weights of one process with the same global batch.

Per-process batches of 2 on 2 processes see the same samples per step as one process with batches of 4 (the
epoch permutation is shared, accelerate deals the batches out in turn). For the losses to be exactly
decomposable: no dropout, frozen BatchNorm, no multi-scale augmentation (equal image sizes, hence equal
padding), and DETR's "no object" weight 1 (its weighted cross-entropy is a per-process mean otherwise; the
box losses divide by the box count averaged over processes already).
"""
import json
import sys

import pytest
import torch
from helpers import TRAIN
from helpers import run_training as run
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

TINY_DETR = ("model_overrides={backbone: resnet18, d_model: 32, encoder_layers: 1, decoder_layers: 1, "
             "encoder_attention_heads: 2, decoder_attention_heads: 2, encoder_ffn_dim: 64, decoder_ffn_dim: 64, "
             "num_queries: 10, auxiliary_loss: true, dropout: 0.0, eos_coefficient: 1.0}")


def train_args(output_dir, data_cache, batch_size):
    return [str(TRAIN), "--model", "detr-resnet-50", "--set", TINY_DETR, "--data", "shapes-b",
            "--data-cache", str(data_cache), "--image-size", "64", "--max-train-samples", "16",
            "--max-eval-samples", "3", "--batch-size", str(batch_size), "--epochs", "2", "--max-steps", "5",
            "--augment", "false", "--backbone-policy", "pretrained", "--checkpoint-every", "0",
            "--eval-every", "0", "--log-with", "[]", "--predictions-image", "false", "--num-workers", "0",
            "--output-dir", str(output_dir),
            # each process draws its own denoising noise, so only the paper recipe decomposes exactly (the denoising
            # recipes across processes: test_modern_training_runs.py)
            "--recipe", "paper"]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    cache = tmp_path / "data"
    run([sys.executable, *train_args(tmp_path / "one", cache, batch_size=4)])
    # `accelerate launch --cpu --num_processes 2` starts several CPU processes only through MPI; torchrun plus
    # ACCELERATE_USE_CPU gives accelerate's MULTI_CPU (gloo) without it.
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    out = run([*launch, *train_args(tmp_path / "two", cache, batch_size=2)], ACCELERATE_USE_CPU="true")
    assert "2 process(es)" in out

    one = load_file(tmp_path / "one" / "model" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=f"{name} differs")
    # both runs took 5 optimizer steps, and the distributed evaluation (3 images over 2 processes, so one
    # padded duplicate) scores the same predictions
    for run_dir in ("one", "two"):
        state = json.loads(next((tmp_path / run_dir / "checkpoints").glob("step-*/trainer_state.json")).read_text())
        assert state["global_step"] == 5
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m1.keys() == m2.keys()
    for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large"):
        assert abs(m1[key] - m2[key]) < 1e-6, key
    assert m1["skipped_undecodable_images"] == m2["skipped_undecodable_images"] == {"train": 0, "eval": 0}
