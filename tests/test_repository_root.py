"""From the clone's root, as users start things there (python -c / -m, `accelerate launch`, a notebook): the
repository root is first on sys.path, and nothing in the checkout may pass for another package. transformers
imports the third-party `kernels` package, which a top-level kernels/ package would shadow."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import SMALL, run_without_detrkit

ROOT = Path(__file__).resolve().parents[1]
TINY = ("model_overrides={backbone: resnet18, d_model: 32, encoder_layers: 1, decoder_layers: 1, "
        "encoder_attention_heads: 2, decoder_attention_heads: 2, encoder_ffn_dim: 64, decoder_ffn_dim: 64, "
        "num_queries: 10, num_feature_levels: 2, encoder_n_points: 2, decoder_n_points: 2}")


def run_at_root(command, **env_vars):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", **env_vars}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(c) for c in command], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


def test_no_top_level_folder_is_a_package():
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() or p.suffix == ".py"
                      and p.name != "setup.py")
    assert packages == []


@pytest.mark.slow
def test_real_kernels_package_and_detrkit_import_from_the_root():
    out = run_at_root([sys.executable, "-c",
                       "import sys, kernels, transformers.integrations.hub_kernels, detrkit.modeling, "
                       "detrkit.kernels, detrkit.training.loop; from kernels import CUDAProperties; "
                       "print(sys.path[0] == '', kernels.__file__)"])
    is_first, kernels_file = out.split()
    assert is_first == "True" and "site-packages" in kernels_file and str(ROOT) not in kernels_file


def test_python_m_detrkit_from_the_root():
    assert "usage: detrkit train" in run_at_root([sys.executable, "-m", "detrkit", "train", "--help"])


@pytest.mark.slow
@pytest.mark.e2e
def test_readme_quick_start_runs_from_the_root(tmp_path):
    """The README's first Python block, run from the root; its folder and image names point into tmp_path."""
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S).group(1)
    Image.new("RGB", (96, 64), (120, 80, 40)).save(tmp_path / "cats.jpg")
    for name in ("my-detr", "cats.jpg"):
        assert f'"{name}"' in block, name
        block = block.replace(f'"{name}"', repr(str(tmp_path / name)))
    run_at_root([sys.executable, "-c", block])
    assert (tmp_path / "my-detr" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.e2e
def test_accelerate_launch_trains_from_the_root(tmp_path):
    # the suite's one `accelerate launch` run: its --mixed_precision bf16 reaches the run (it was once overridden by
    # the config's 'no'; the config winning over the launcher: test_train_cli.py)
    out = run_at_root([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                       "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
                       "-m", "detrkit", "train", "--model", "deformable-detr", "--set", TINY, "--data", "shapes-b",
                       "--data-cache", tmp_path / "data", "--image-size", "64", "--builtin-num-train", "4",
                       "--builtin-num-val", "2", "--batch-size", "2", "--max-steps", "1", "--num-workers", "0",
                       "--report-to", "[]", "--predictions-image", "false", "--output-dir", tmp_path / "run"],
                      DETRKIT_DISABLE_KERNELS="1")
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert "mixed_precision bf16 (launcher)" in out and "mixed precision bf16" in out


@pytest.mark.slow
def test_plain_transformers_loads_a_deformable_detr_folder_from_the_root(tmp_path):
    from detrkit.modeling import DeformableDetrConfig, DeformableDetrForObjectDetection

    DeformableDetrForObjectDetection(DeformableDetrConfig(**SMALL)).save_pretrained(tmp_path / "model")
    result = run_without_detrkit("""
        import sys
        from transformers import AutoModelForObjectDetection
        model = AutoModelForObjectDetection.from_pretrained(sys.argv[1], trust_remote_code=True)
        print(type(model).__name__)
    """, tmp_path / "model", cwd=ROOT, hf_home=tmp_path / "hf")
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split()[-1] == "DeformableDetrForObjectDetection"
