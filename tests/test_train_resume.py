"""A run killed with SIGKILL after a checkpoint and resumed ends with the same weights as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

TRAIN = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
TINY_DETR = ("model_overrides={backbone: resnet18, d_model: 32, encoder_layers: 1, decoder_layers: 1, "
             "encoder_attention_heads: 2, decoder_attention_heads: 2, encoder_ffn_dim: 64, decoder_ffn_dim: 64, "
             "num_queries: 10, auxiliary_loss: true}")


def train_command(output_dir, data_cache, *extra):
    # 6 images / batch 2 = 3 steps per epoch, 6 steps in all; dropout on (RNG restore matters), augmentation on
    # (its seeding matters); checkpoints at steps 2, 3 (epoch end), 4 and 6.
    return [sys.executable, str(TRAIN), "--model", "detr-resnet-50", "--set", TINY_DETR, "--data", "shapes-b",
            "--data-cache", str(data_cache), "--image-size", "64", "--max-train-samples", "6",
            "--max-eval-samples", "2", "--batch-size", "2", "--epochs", "3", "--max-steps", "6",
            "--checkpoint-every", "2", "--eval-every", "0", "--log-with", "[]", "--predictions-image", "false",
            "--num-workers", "0",
            "--output-dir", str(output_dir), *extra]


def run(command, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(process, timeout=600):
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return out


def latest_step(output_dir):
    index = Path(output_dir) / "checkpoints" / "index.json"
    latest = json.loads(index.read_text())["latest"] if index.exists() else None
    return int(latest.split("-")[1]) if latest else 0


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    cache = tmp_path / "data"
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    finish(run(train_command(straight, cache)))

    process = run(train_command(killed, cache))
    deadline = time.time() + 600
    # kill after step 4's checkpoint: one batch into epoch 2, which the resumed run must skip, and epoch 1's
    # history record written, which it must keep
    while latest_step(killed) < 4 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; the test proves nothing"
    process.send_signal(signal.SIGKILL)
    process.wait()
    step = latest_step(killed)
    assert 4 <= step < 6
    out = finish(run(train_command(killed, cache, "--resume", "latest")))
    assert f"resumed from {killed / 'checkpoints'}" in out

    a = load_file(straight / "model" / "model.safetensors")
    b = load_file(killed / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=f"{name} differs after resume")

    def history(run_dir):
        return [(r["epoch"], r["step"], r["train_loss"]) for r in map(json.loads, (run_dir / "history.jsonl").open())]

    assert history(killed) == history(straight) and len(history(straight)) == 2
