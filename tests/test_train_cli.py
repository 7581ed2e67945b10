"""The command line answers user mistakes with one line and a non-zero exit (in-process, no training), and the
configuration chosen for a run: demo file only for the demo, launcher flags, sizes and schedule from the model
and the data, --help listing each option once."""
import json
import re

import pytest

from detrkit.cli import dispatch as cli
from detrkit.training import config as config_module
from detrkit.families import DEFORMABLE_DETR, DETR
from detrkit.training.config import (TrainConfig, default_output_dir, launcher_settings, parse_config,
                                     resolve_for_data, resolve_for_model)

TINY = ("model_overrides={backbone: resnet18, d_model: 32, encoder_layers: 1, decoder_layers: 1, "
        "encoder_attention_heads: 2, decoder_attention_heads: 2, encoder_ffn_dim: 64, decoder_ffn_dim: 64, "
        "num_queries: 10}")


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("detrkit "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_help_lists_each_option_once_with_its_default(capsys):
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0
    for name in TrainConfig.field_names():
        flag = f"--{name.replace('_', '-')}"
        assert len(re.findall(rf"^\s+{re.escape(flag)}(?=\s)", out, flags=re.M)) == 1, flag
    assert "chosen for the run" not in out and "(default: 0.9998)" in out
    assert "or a checkpoint folder (default: off) --push-to-hub" in " ".join(out.split())  # None: "off", once
    assert "--log-with" not in out and "--predictions-image" not in out  # old names still parse, not listed


def test_demo_file_only_for_the_demo(tmp_path, monkeypatch):
    demo = parse_config([])
    assert demo.model == "checkpoints/deformable-detr-shapes-a" and demo.output_dir == "outputs/demo"
    assert demo.image_size == 128 and demo.max_train_minutes == 7.5
    user = parse_config(["--model", "deformable-detr", "--data", "my/coco"])
    assert (user.image_size, user.output_dir, user.max_train_minutes, user.threshold, user.epochs) == \
        (None, None, None, None, None)
    # an installed package without the repository: a clear message instead of a missing-file traceback
    monkeypatch.setattr(config_module, "REPO_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="the demo .* needs detrkit's repository.*--model deformable-detr --data"):
        parse_config([])


def test_choices_from_model_and_data():
    config = TrainConfig(model="facebook/detr-resnet-50", data="my/coco")
    sized, notes = resolve_for_model(config, DETR, {"shortest_edge": 800, "longest_edge": 1333}, builtin_data=False)
    assert (sized.image_size, sized.max_size, sized.threshold) == (800, 1333, 0.5)
    assert any("checkpoint's processor" in n for n in notes)
    assert resolve_for_model(config, DEFORMABLE_DETR, None, builtin_data=False)[0].threshold == 0.3
    assert resolve_for_model(config, DEFORMABLE_DETR, None, builtin_data=True)[0].image_size == 128
    small, notes = resolve_for_data(sized, DETR, 160, pretrained=True)
    assert small.epochs == 100 and small.lr == 1e-4 and small.lr_drop_epoch == 80 and small.eval_every == 10
    assert any("epochs 100 (160 training images" in n for n in notes)
    big = resolve_for_data(sized, DEFORMABLE_DETR, 118_287, pretrained=True)[0]
    assert big.epochs == 12 and big.lr == 2e-4
    assert resolve_for_data(sized, DEFORMABLE_DETR, 500, pretrained=False)[0].epochs == 50
    fixed = resolve_for_data(TrainConfig(model="m", data="d", epochs=7, eval_every=0), DETR, 10, True)[0]
    assert (fixed.epochs, fixed.eval_every) == (7, 0)
    assert re.fullmatch(r"outputs/detr-resnet-50-coco-\d{8}-\d{6}", default_output_dir(config))


def test_launcher_flags_unless_the_config_says_otherwise():
    env = {"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}
    chosen, notes = launcher_settings(TrainConfig(), env)
    assert (chosen.mixed_precision, chosen.gradient_accumulation_steps) == ("bf16", 4)
    assert notes == ["mixed_precision bf16 (launcher)", "gradient_accumulation_steps 4 (launcher)"]
    chosen, notes = launcher_settings(TrainConfig(mixed_precision="no"), env)
    assert chosen.mixed_precision == "no" and notes[0] == "mixed_precision no (config, over the launcher's bf16)"
    chosen, notes = launcher_settings(TrainConfig(), {})
    assert (chosen.mixed_precision, chosen.gradient_accumulation_steps) == ("no", 1)


@pytest.fixture
def broken(tmp_path):
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "train").mkdir()
    (coco / "annotations" / "instances_train.json").write_text('{"images": [ {"id": 1, ')  # cut short
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{not json")
    run = tmp_path / "run"
    (run / "checkpoints" / "step-0000010").mkdir(parents=True)
    (run / "checkpoints" / "index.json").write_text(json.dumps({"latest": "step-0000010", "best": None,
                                                                "steps": ["step-0000010"]}))
    return tmp_path


MISTAKES = [
    (["train", "--model", "deformable-detr", "--data", "{tmp}/nowhere"], ["nowhere"]),
    (["train", "--model", "{tmp}/nowhere", "--data", "shapes-b"], ["nowhere"]),
    (["train", "--model", "deformable-detr", "--data", "shapes-b", "--epochs", "-2"], ["epochs must be >= 1"]),
    (["train", "--model", "deformable-detr", "--data", "shapes-b", "--batch-size", "two"], ["batch_size"]),
    (["train", "--model", "deformable-detr", "--data", "shapes-b", "--schedule", "linear"], ["schedule"]),
    (["train", "--data", "shapes-b"], ["--data was given without --model"]),
    (["train", "--config", "{tmp}/missing.yaml"], ["missing.yaml"]),
    (["train", "--model", "deformable-detr", "--data", "shapes-b", "--output-dir", "{tmp}/empty", "--resume",
      "latest"], ["--resume latest: no checkpoint"]),
    (["train", "--model", "deformable-detr", "--data", "shapes-b", "--output-dir", "{tmp}/run"],
     ["--resume latest", "--overwrite-output-dir"]),
    (["train", "--model", "deformable-detr", "--data", "shapes-b", "--output-dir", "{tmp}/run", "--resume",
      "{tmp}/run"], ["not a checkpoint folder"]),
    (["train", "--model", "{tmp}/model", "--data", "shapes-b", "--output-dir", "{tmp}/out"], ["model"]),
    (["evaluate", "{tmp}/model", "--data", "{tmp}/coco", "--split", "train"], ["instances_train.json"]),
    (["evaluate", "{tmp}/nowhere", "--data", "shapes-b"], ["nowhere: no such folder"]),
    (["predict", "{tmp}/model", "{tmp}/nowhere.png"], ["nowhere.png"]),
    (["predict", "{tmp}/model", "{tmp}/coco/train"], ["no images"]),
    (["predict", "{tmp}/model", "{tmp}/x.png", "--save-coco-json", "r.json"], ["--save-coco-json needs --data"]),
]


@pytest.mark.parametrize("argv, needles", MISTAKES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in MISTAKES])
def test_mistakes_give_one_line_and_exit_2(capsys, broken, monkeypatch, argv, needles):
    monkeypatch.chdir(broken)
    code, _, err = run_cli(capsys, *[a.format(tmp=broken) for a in argv], "--set", TINY) if argv[0] == "train" \
        and "--config" not in argv else run_cli(capsys, *[a.format(tmp=broken) for a in argv])
    assert_one_line_error(code, err, *needles)


def test_debug_shows_the_traceback(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--model", "deformable-detr", "--data", tmp_path / "nowhere", "--debug")
    assert code == 2 and "Traceback" in err and "nowhere" in err.splitlines()[-1]


def test_unknown_command(capsys):
    code, _, err = run_cli(capsys, "trian")
    assert code == 2 and "unknown command 'trian'" in err


def test_random_backbone_on_user_data_warns_how_to_start_from_imagenet(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "--model", "deformable-detr", "--set", TINY, "--data",
                             tmp_path / "nowhere", "--output-dir", tmp_path / "out")
    assert code == 2  # the data is missing; the model was looked at first
    assert "WARNING: deformable-detr starts from a random backbone" in out
    assert "use_pretrained_backbone=true" in out and "SenseTime/deformable-detr" in out


@pytest.mark.parametrize("script", ["train.py", "eval.py", "predict.py"])
def test_script_wrappers_run_from_the_scripts_folder(script):
    """Python puts scripts/ first on the path: no wrapper may hide an installed package (evaluate.py would)."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / script
    assert "sys.path" not in path.read_text()
    result = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "usage: detrkit" in result.stdout, result.stderr[-2000:]
