"""Named training recipes (training/recipes.py): what each sets for which model, that the user's model_overrides win,
that the fields reach the built or loaded model and its exported config.json, and the convergence benchmark's
--quick run end to end."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from detrkit.errors import UsageError
from detrkit.training.config import build_config, parse_config
from detrkit.training.recipes import DEFAULT_RECIPE, RECIPES, recipe_overrides

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "deformable-detr-shapes-a"
TINY = dict(backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64,
            decoder_ffn_dim=64, num_queries=10)


def deformable(**kwargs):
    return SimpleNamespace(**{"num_queries": 50, "with_box_refine": False, "two_stage": False, **kwargs})


def test_fast_sets_the_papers_fields_relative_to_the_model():
    fields, note = recipe_overrides("fast", "deformable_detr", deformable(with_box_refine=True))
    assert fields == dict(num_denoising=30, contrastive_denoising=True, label_noise_ratio=0.5, box_noise_scale=0.4,
                          num_queries_one_to_many=50, k_one_to_many=6, lambda_one_to_many=1.0,
                          look_forward_twice=True)
    assert note.startswith("recipe fast: num_denoising=30") and "mixed_query_selection (does not apply)" in note
    # look-forward-twice needs box refinement, mixed query selection two-stage
    plain, _ = recipe_overrides("fast", "deformable_detr", deformable())
    assert "look_forward_twice" not in plain and "mixed_query_selection" not in plain
    two_stage, _ = recipe_overrides("fast", "deformable_detr", deformable(with_box_refine=True, two_stage=True))
    assert two_stage["mixed_query_selection"] is True
    # ... but not over a checkpoint whose weights have no learned content queries
    loaded, note = recipe_overrides("fast", "deformable_detr", deformable(two_stage=True), checkpoint=True)
    assert "mixed_query_selection" not in loaded and "the checkpoint has no weights" in note


def test_detr_gets_dn_detr_one_to_many_and_nothing_deformable_only():
    fields, _ = recipe_overrides("fast", "detr", SimpleNamespace(num_queries=100))
    dn_detr = dict(denoising_groups=5, contrastive_denoising=False, label_noise_ratio=0.2, box_noise_scale=0.4)
    one_to_many = dict(num_queries_one_to_many=100, k_one_to_many=6, lambda_one_to_many=1.0)
    assert fields == {**dn_detr, **one_to_many}
    assert recipe_overrides("denoising", "detr", SimpleNamespace())[0] == dn_detr
    assert recipe_overrides("one-to-many", "detr", SimpleNamespace(num_queries=100))[0] == one_to_many
    with pytest.raises(UsageError, match="'varifocal' does not apply to detr"):
        recipe_overrides("varifocal", "detr", SimpleNamespace())


def test_each_change_alone():
    model = deformable(with_box_refine=True)
    assert set(recipe_overrides("denoising", "deformable_detr", model)[0]) == {
        "num_denoising", "contrastive_denoising", "label_noise_ratio", "box_noise_scale"}
    assert recipe_overrides("one-to-many", "deformable_detr", model)[0]["num_queries_one_to_many"] == 50
    assert recipe_overrides("look-forward-twice", "deformable_detr", model)[0] == {"look_forward_twice": True}
    assert recipe_overrides("varifocal", "deformable_detr", model)[0] == {"classification_loss": "varifocal"}


def test_short_schedule_is_denoising_at_four_times_the_papers_lr_unless_the_run_sets_one():
    from detrkit.families import DETR, DEFORMABLE_DETR
    from detrkit.training.config import TrainConfig, resolve_for_data

    assert DEFAULT_RECIPE == "short-schedule"  # what the convergence benchmark measured fastest
    for family, config in (("deformable_detr", deformable(with_box_refine=True)), ("detr", SimpleNamespace())):
        assert recipe_overrides("short-schedule", family, config)[0] == recipe_overrides("denoising", family, config)[0]
    assert RECIPES["short-schedule"].lr_scale == 4 and RECIPES["denoising"].lr_scale == 1

    def lr(family, recipe, **fields):
        config = TrainConfig(model="m", data="d", epochs=12, recipe=recipe, **fields)
        resolved, notes = resolve_for_data(config, family, 512, True, RECIPES[recipe].lr_scale)
        return resolved.lr, [note for note in notes if note.startswith("lr ")]

    assert lr(DEFORMABLE_DETR, "short-schedule") == (8e-4, ["lr 0.0008 (the Deformable DETR paper's x 4, "
                                                            "recipe short-schedule)"])
    assert lr(DETR, "short-schedule")[0] == 4e-4
    assert lr(DEFORMABLE_DETR, "paper") == (2e-4, ["lr 0.0002 (the Deformable DETR paper)"])
    assert lr(DEFORMABLE_DETR, "short-schedule", lr=3e-5) == (3e-5, [])  # the user's lr wins


def test_paper_sets_nothing_but_switches_off_what_a_checkpoint_was_trained_with():
    assert recipe_overrides("paper", "deformable_detr", deformable())[0] == {}
    trained_fast = deformable(num_denoising=100, num_queries_one_to_many=150, look_forward_twice=True)
    assert recipe_overrides("paper", "deformable_detr", trained_fast, checkpoint=True)[0] == dict(
        num_denoising=0, num_queries_one_to_many=0, look_forward_twice=False)
    assert recipe_overrides("denoising", "deformable_detr", trained_fast)[0]["num_queries_one_to_many"] == 0


def test_explicit_model_overrides_win():
    fields, note = recipe_overrides("fast", "deformable_detr", deformable(), {"num_denoising": 20, "k_one_to_many": 2})
    assert "num_denoising" not in fields and "k_one_to_many" not in fields
    assert "num_denoising (model_overrides)" in note and fields["num_queries_one_to_many"] == 50


def test_unknown_recipe_lists_the_names():
    with pytest.raises(UsageError) as error:
        recipe_overrides("dino", "deformable_detr", deformable())
    assert all(name in str(error.value) for name in RECIPES)
    with pytest.raises(UsageError, match="recipe must be one of paper, short-schedule, fast"):
        parse_config(["--model", "m", "--data", "d", "--recipe", "dino"])
    assert parse_config(["--model", "m", "--data", "d", "--recipe", "one-to-many"]).recipe == "one-to-many"
    assert parse_config(["--model", "m", "--data", "d"]).recipe == DEFAULT_RECIPE


def load(model: str, recipe: str, **overrides):
    from detrkit.training.models import resolve_model

    config = build_config(dict(model=model, data="shapes-a", recipe=recipe, model_overrides=overrides))
    loaded = resolve_model(config, log=lambda line: None)
    return loaded.adapt_to_labels({0: "a", 1: "b"}, log=lambda line: None), loaded.recipe_note


def test_fields_reach_a_preset_model():
    model, note = load("deformable-detr", "fast", **TINY)
    assert model.config.num_denoising == 30 and model.config.num_queries_one_to_many == 10
    assert model.config.look_forward_twice is False  # no box refinement in this preset
    assert note.startswith("recipe fast: num_denoising=30")
    assert load("deformable-detr", "fast", **TINY, num_denoising=7)[0].config.num_denoising == 7
    detr, _ = load("detr-resnet-50", "fast", **TINY)
    assert (detr.config.denoising_groups, detr.config.contrastive_denoising) == (5, False)
    assert load("deformable-detr", "paper", **TINY)[0].config.num_denoising == 0


@pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").exists(), reason="demo checkpoint not in this checkout")
def test_fields_reach_a_checkpoint_as_from_pretrained_kwargs():
    model, note = load(str(CHECKPOINT), "fast")  # the training-only queries are new, and allowed to be
    assert (model.config.num_denoising, model.config.num_queries_one_to_many) == (30, 100)
    assert model.config.look_forward_twice is True  # the shipped model refines its boxes
    assert note.startswith("recipe fast:")


@pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").exists(), reason="demo checkpoint not in this checkout")
@pytest.mark.slow
@pytest.mark.e2e
def test_quick_benchmark_table_plot_and_exported_configs(tmp_path):
    out, plot = tmp_path / "out", tmp_path / "plot.png"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmarks" / "benchmark_convergence.py"), "--quick", "--recipes", "paper,fast",
         "--output-dir", str(out), "--plot", str(plot), "--data-cache", str(tmp_path / "data")],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    table = result.stdout.split("AP per epoch\n", 1)[1].splitlines()
    rows = {line.split()[0]: line.split() for line in table if line.split() and line.split()[0] in ("paper", "fast")}
    assert set(rows) == {"paper", "fast"} and all(len(row) == 5 + 2 for row in rows.values())  # 2 epochs
    assert plot.stat().st_size > 0
    report = json.loads((out / "finetune-shapes-b" / "convergence.json").read_text())["results"]
    assert [p["epoch"] for p in report["fast"]["curve"]] == [1, 2]
    assert report["fast"]["cpu_minutes"] > 0 and report["fast"]["images_per_second"] > 0
    for recipe, denoising in (("paper", 0), ("fast", 30)):
        exported = json.loads((out / "finetune-shapes-b" / recipe / "model" / "config.json").read_text())
        assert exported["num_denoising"] == denoising


def benchmark_module():
    """scripts/benchmarks/benchmark_convergence.py as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location("benchmark_convergence", REPO / "scripts" / "benchmarks" / "benchmark_convergence.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # (its dataclasses look it up)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").exists(), reason="demo checkpoint not in this checkout")
def test_setups_train_the_same_steps_from_a_random_transformer_on_the_shipped_backbone(tmp_path):
    from safetensors.torch import load_file

    bench = benchmark_module()
    initial = bench.initial_model("detr", tmp_path / "initial")
    saved, shipped = load_file(initial / "model.safetensors"), load_file(CHECKPOINT / "model.safetensors")
    backbone = [k for k in saved if k.startswith("model.backbone.")]
    assert backbone and all((saved[k] == shipped[k].float()).all() for k in backbone)
    assert json.loads((initial / "config.json").read_text())["dilation"] is True  # DC5
    for name, setup in bench.SETUPS.items():
        args = bench.parse_args(["--setup", name, "--data-cache", str(tmp_path / "data")])
        config = parse_config(bench.train_args(args, setup, "fast", tmp_path / "run", initial if setup.initial
                                               else None))
        assert (config.recipe, config.eval_every, config.max_train_minutes) == ("fast", 1, setup.max_minutes)
        assert config.model == (str(initial) if setup.initial else "checkpoints/deformable-detr-shapes-a")
        assert config.data_cache == str(tmp_path / "data")
        assert config.lr is None  # each recipe's own, not detr_shapes_a.yaml's 1e-4
    # --set is detrkit train's, not an abbreviation of the benchmark's --setup
    args = bench.parse_args(["--setup", "finetune-shapes-b", "--set", "lr=4e-4"])
    assert parse_config(bench.train_args(args, bench.SETUPS[args.setup], "paper", tmp_path / "run", None)).lr == 4e-4
    main_job = parse_config(bench.train_args(bench.parse_args([]), bench.SETUPS["finetune-shapes-b"], "paper",
                                             tmp_path / "run", None))
    assert (main_job.epochs, main_job.batch_size, main_job.schedule) == (12, 8, "cosine")  # the main job's schedule
