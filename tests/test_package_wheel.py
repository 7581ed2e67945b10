"""The installed package: a wheel built from this checkout, installed into a fresh venv, trains (tiny), evaluates
and predicts from a folder outside the repository through the `detrkit` console script and `python -m detrkit`,
with the checkout's editable install hidden, and ships the model card templates (the same card as the repo's)."""
import os
import shutil
import site as site_module
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL_SKIP = {".git", "build", "dist", "outputs", "runs", "checkpoints", "data", ".pytest_cache", ".hypothesis"}


def SKIP(folder, names):
    """What the copy leaves out: generated top-level folders (not detrkit.data's data/), caches anywhere."""
    top_level = Path(folder) == REPO
    return [n for n in names if (top_level and n in TOP_LEVEL_SKIP) or n == "__pycache__" or n.endswith(".egg-info")]
TINY = ("model_overrides={backbone: resnet18, d_model: 32, encoder_layers: 1, decoder_layers: 1, "
        "encoder_attention_heads: 2, decoder_attention_heads: 2, encoder_ffn_dim: 64, decoder_ffn_dim: 64, "
        "num_queries: 10, num_feature_levels: 2, encoder_n_points: 2, decoder_n_points: 2}")


def run(command, cwd, env, check=True):
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=SKIP)  # build/ of the shared checkout stays untouched
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", source, "-w", root / "dist"],
        root, env)
    wheel = next((root / "dist").glob("detrkit-*.whl"))
    run([sys.executable, "-m", "venv", root / "venv"], root, env)
    python = root / "venv" / "bin" / "python"
    run([python, "-m", "pip", "install", "--no-deps", "-q", wheel], root, env)
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env)
                .stdout.strip())
    # torch and friends from this interpreter's site folders, as plain path entries: their .pth files (this
    # checkout's editable finder among them) do not run there
    (site / "outer_site.pth").write_text("\n".join(site_module.getsitepackages()) + "\n")
    work = root / "elsewhere"
    work.mkdir()
    env = {**env, "DETRKIT_DISABLE_KERNELS": "1", "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1",
           "PATH": f"{root / 'venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    return python, work, env, site


def test_installed_wheel_trains_evaluates_and_predicts_outside_the_repository(venv):
    python, work, env, site = venv
    where = run([python, "-c", "import detrkit, detrkit.training, detrkit.modeling; print(list(detrkit.__path__)); "
                               "print(detrkit.training.__file__)"], work, env).stdout
    assert str(REPO) not in where and str(site) in where, where
    assert (site / "detrkit" / "model_cards" / "deformable_detr.md").read_text() == \
        (REPO / "model_cards" / "deformable_detr.md").read_text()

    demo = run(["detrkit", "train"], work, env, check=False)  # no repository here: one line, exit 2
    assert demo.returncode == 2 and "needs detrkit's repository" in demo.stderr and "Traceback" not in demo.stderr

    run(["detrkit", "train", "--model", "deformable-detr", "--set", TINY, "--data", "shapes-b", "--data-cache",
         work / "data", "--image-size", "64", "--builtin-num-train", "4", "--builtin-num-val", "2", "--batch-size",
         "2", "--max-steps", "1", "--num-workers", "0", "--report-to", "[]", "--predictions-image", "false",
         "--output-dir", "run"], work, env)
    card = (work / "run" / "model" / "README.md").read_text()
    assert "Deformable DETR (Zhu et al." in card  # the repository's template, not the short fallback card
    assert "model-index" in card

    generated = next((work / "data").glob("shapes-b-64px*"))  # a COCO-layout folder
    run([python, "-m", "detrkit", "evaluate", "run/model", "--data", generated, "--output", "eval.json"], work, env)
    assert (work / "eval.json").is_file() and (work / "eval_confusion_matrix.png").is_file()
    image = sorted((generated / "val").glob("*.png"))[0]
    run(["detrkit", "predict", "run/model", image, "--output-dir", "preds"], work, env)
    assert (work / "preds" / "predictions.json").is_file() and (work / "preds" / f"{image.stem}.png").is_file()
