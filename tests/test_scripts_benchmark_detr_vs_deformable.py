"""scripts/benchmarks/benchmark_detr_vs_deformable.py on a tiny setting: both detectors start from the demo checkpoint's
backbone, train the same epochs, and the comparison (table, json, plot) comes out."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "deformable-detr-shapes-a"


@pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").exists(), reason="demo checkpoint not in this checkout")
def test_same_backbone_same_budget_and_comparison_outputs(tmp_path):
    out = tmp_path / "cmp"
    env = dict(os.environ, OMP_NUM_THREADS="2", DETRKIT_DISABLE_KERNELS="1")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmarks" / "benchmark_detr_vs_deformable.py"), "--epochs", "2",
         "--image-size", "64", "--max-train-samples", "4", "--max-eval-samples", "4", "--batch-size", "2",
         "--num-workers", "0", "--data-cache", str(tmp_path / "data"), "--output-dir", str(out)],
        env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "DETR's final AP" in result.stdout

    shipped = load_file(CHECKPOINT / "model.safetensors")
    for kind in ("detr", "deformable"):
        init = load_file(out / kind / "init" / "model.safetensors")
        backbone = [k for k in init if k.startswith("model.backbone.")]
        assert backbone and all((init[k] == shipped[k].float()).all() for k in backbone)
    report = json.loads((out / "comparison.json").read_text())
    for kind in ("detr", "deformable"):
        assert [r["epoch"] for r in report["histories"][kind]] == [1, 2]
        assert all(0 <= r["map"] <= 1 and "map_small" in r for r in report["histories"][kind])
    assert (out / "comparison.png").stat().st_size > 0
