#!/usr/bin/env python
"""Convergence of the named training recipes (training/recipes.py): AP against epochs and against CPU minutes.

Each recipe is one `python -m detrkit train --recipe NAME` run of the same setup, evaluated after every epoch; its
history.jsonl gives AP per epoch, the child's CPU time (getrusage of the waited-for children: the run and its
data workers) gives CPU minutes, spread over the epochs in proportion to their wall time. Images per second in a
training step (forward, backward, optimizer step on batches loaded beforehand) are timed here, in this process,
on the run's own model, batch and image size. Setups:

- finetune-shapes-b: the main job (scripts/configs/finetune_shapes_b.yaml: the shipped checkpoint fine-tuned on
  shapes-b, its schedule), without its time guard so that every recipe takes the same steps;
- deformable-scratch-shapes-a: the shipped checkpoint's Deformable DETR (box refinement) with a random
  transformer on its ResNet-18 (the only trained backbone offline, standing in for ImageNet's), shapes-a, 12 epochs;
- detr-r18-dc5-shapes-a: DETR R18-DC5 the same way (checkpoints/detr-shapes-a/training/RUN.md, its starting point) with
  the schedule of scripts/configs/detr_shapes_a.yaml, stopped by --max-minutes (wall minutes of training per
  recipe: 60 on 2 cores is about 2 CPU hours).

    python scripts/benchmarks/benchmark_convergence.py --setup finetune-shapes-b
    python scripts/benchmarks/benchmark_convergence.py --setup detr-r18-dc5-shapes-a --max-minutes 60
    python scripts/benchmarks/benchmark_convergence.py --quick --recipes paper,fast      # smoke run: tiny sizes, 2 epochs

Other arguments go to every `detrkit train` (e.g. --data-cache DIR, --builtin-num-train 2048). Writes
<output-dir>/<setup>/<recipe>/ (full training runs), convergence.json and the plot (AP vs epoch, AP vs CPU minutes).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from detrkit.errors import UsageError
from detrkit.training.recipes import get_recipe

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "checkpoints" / "deformable-detr-shapes-a"  # its ResNet-18 starts setups b and c
COMMON = ["--eval-every", "1", "--drawings", "false", "--report-to", "[]", "--checkpoint-every", "0",
          "--overwrite-output-dir", "true"]
QUICK = ["--epochs", "2", "--builtin-num-train", "4", "--builtin-num-val", "2", "--max-train-samples", "2",
         "--max-eval-samples", "2", "--image-size", "64", "--batch-size", "2", "--num-workers", "0"]
# DETR R18-DC5 of checkpoints/detr-shapes-a (RUN.md, its starting point)
DETR_R18_DC5 = dict(backbone="resnet18", dilation=True, d_model=128, encoder_layers=3, decoder_layers=3,
                    encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=512, decoder_ffn_dim=512,
                    num_queries=100, dropout=0.0, auxiliary_loss=True)


@dataclass(frozen=True)
class Setup:
    description: str
    train_args: tuple[str, ...]
    recipes: tuple[str, ...]  # the paper recipe, each change alone, all together
    initial: str | None = None  # a random transformer on the shipped ResNet-18: "deformable_detr" or "detr"
    max_minutes: float | None = None


DEFORMABLE_ABLATION = ("paper", "short-schedule", "denoising", "one-to-many", "look-forward-twice", "varifocal", "fast")
SETUPS = {
    "finetune-shapes-b": Setup(
        "the main job: checkpoints/deformable-detr-shapes-a fine-tuned on shapes-b at its schedule",
        ("--config", "scripts/configs/finetune_shapes_b.yaml"), DEFORMABLE_ABLATION),
    "deformable-scratch-shapes-a": Setup(
        "Deformable DETR (box refinement), random transformer on the shipped ResNet-18, shapes-a, 12 epochs",
        ("--data", "shapes-a", "--image-size", "128", "--random-crop", "true", "--builtin-num-train", "1024",
         "--batch-size", "8", "--epochs", "12", "--num-workers", "1"),
        DEFORMABLE_ABLATION, initial="deformable_detr"),
    "detr-r18-dc5-shapes-a": Setup(
        "DETR R18-DC5, random transformer on the shipped ResNet-18, shapes-a (detr_shapes_a.yaml's schedule)",
        ("--config", "scripts/configs/detr_shapes_a.yaml", "--set", "lr=null"),  # the recipe's, not the file's 1e-4
        ("paper", "short-schedule", "fast"), initial="detr",
        max_minutes=60),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,  # --set is detrkit train's
                                     epilog="Other arguments go to every `detrkit train` run.")
    parser.add_argument("--setup", choices=SETUPS, default="finetune-shapes-b")
    parser.add_argument("--recipes", default=None, help="comma-separated recipe names (default: the setup's "
                                                        "ablation: paper, each change alone, fast)")
    parser.add_argument("--epochs", type=int, default=None, help="override the setup's epochs")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="training time guard per recipe, wall minutes (max_train_minutes; default: the setup's)")
    parser.add_argument("--output-dir", default="outputs/convergence")
    parser.add_argument("--plot", default=None, help="plot path (default: <output-dir>/<setup>/convergence.png)")
    parser.add_argument("--speed-steps", type=int, default=10, help="timed training steps for images/s (0: skip)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 epochs: checks the script works")
    args, train_extra = parser.parse_known_args(argv)
    args.train_extra = train_extra
    return args


def initial_model(family_name: str, folder: Path) -> Path:
    """A random transformer on the shipped checkpoint's ResNet-18 (weights and BatchNorm statistics), its processor
    and labels, saved once; every recipe starts from the same one."""
    import torch
    from safetensors.torch import load_file

    from detrkit.families import DEFORMABLE_DETR, FAMILIES

    if (folder / "config.json").exists():
        return folder
    family = FAMILIES[family_name]
    config = shipped = DEFORMABLE_DETR.config_class.from_pretrained(CHECKPOINT, freeze_backbone_batch_norm=True)
    if family is not DEFORMABLE_DETR:
        config = family.config_class(**DETR_R18_DC5, id2label=shipped.id2label, label2id=shipped.label2id,
                                     freeze_backbone_batch_norm=True)
    torch.manual_seed(0)
    model = family.detection_class(config)
    own = {k for k in model.state_dict() if k.startswith("model.backbone.")}
    weights = load_file(str(CHECKPOINT / "model.safetensors"))
    model.load_state_dict({k: v.float() for k, v in weights.items() if k in own}, strict=False)
    model.save_pretrained(folder)
    family.processor_class(size={"shortest_edge": 128, "longest_edge": 213}).save_pretrained(folder)
    return folder


def train_args(args, setup: Setup, recipe: str, run_dir: Path, initial: Path | None) -> list[str]:
    """The setup's flags, then the benchmark's, --quick's and the user's (later flags win)."""
    extra = ["--model", str(initial)] if initial else []
    extra += ["--epochs", str(args.epochs)] if args.epochs else []
    minutes = args.max_minutes or setup.max_minutes  # none: the same steps for every recipe (no config file's guard)
    return [*setup.train_args, *COMMON, *extra, *(QUICK if args.quick else []), *args.train_extra,
            "--recipe", recipe, "--output-dir", str(run_dir), "--set", f"max_train_minutes={minutes or 'null'}"]


def prepare_data(arguments: list[str]) -> None:
    """Generate a built-in set before the runs, so that no recipe's CPU minutes include making it."""
    from detrkit.training.config import parse_config
    from detrkit.training.detection_data import resolve_source

    resolve_source(parse_config(arguments), log=lambda *_: None)


def run_recipe(arguments: list[str], run_dir: Path) -> dict:
    """One `detrkit train` child: its history, wall and CPU minutes (the child and its data workers)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        code = subprocess.run([sys.executable, "-m", "detrkit", "train", *arguments], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT).returncode
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.time() - started
    if code != 0:
        tail = (run_dir.parent / f"{run_dir.name}.log").read_text().splitlines()[-30:]
        raise SystemExit(f"detrkit train {' '.join(arguments)} failed ({code}):\n" + "\n".join(tail))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    from detrkit.training.history import read_history

    history = read_history(run_dir / "history.jsonl")
    share = cpu / wall  # CPU seconds per wall second over the run
    curve = [{"epoch": r["epoch"], "map": r["map"],
              "cpu_minutes": round(r.get("elapsed_s", wall) * share / 60, 3)} for r in history if "map" in r]
    exported = json.loads((run_dir / "metrics.json").read_text())["map"]  # the best epoch's, when it beat the last
    return {"curve": curve, "map": curve[-1]["map"], "exported_map": exported, "cpu_minutes": round(cpu / 60, 3),
            "wall_minutes": round(wall / 60, 3)}


def train_step_speed(arguments: list[str], steps: int, warmup: int = 2) -> float:
    """Images per second in a training step of the run's model on its batches (after `warmup` steps)."""
    from detrkit.training.config import parse_config
    from detrkit.training.detection import detection_task, prepare_detection_run
    from detrkit.training.optim import build_optimizer

    with contextlib.redirect_stdout(io.StringIO()):
        config, accelerator, loaded, data, model, _ = prepare_detection_run(parse_config(arguments))
        task = detection_task(config, accelerator, loaded, data, model)
    optimizer = build_optimizer(task.model, config.lr, config.lr_backbone_mult, config.lr_linear_proj_mult,
                                config.weight_decay)
    model, optimizer, loader = accelerator.prepare(task.model, optimizer, task.train_loader)
    batches = list(itertools.islice(itertools.cycle(loader), warmup + steps))  # a small set's batches again
    model.train()
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        loss, _ = task.loss(model, batch)
        accelerator.backward(loss)
        if config.clip_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
    return steps * config.batch_size / (time.perf_counter() - start)


def print_table(results: dict[str, dict]) -> None:
    print(f"\n{'recipe':<20} {'AP end':>7} {'CPU min':>8} {'AP/CPU min':>10} {'img/s':>7}  AP per epoch")
    for recipe, r in results.items():
        speed = f"{r['images_per_second']:7.1f}" if r.get("images_per_second") else f"{'-':>7}"
        per_epoch = " ".join(f"{p['map']:.3f}" for p in r["curve"])
        print(f"{recipe:<20} {r['map']:7.3f} {r['cpu_minutes']:8.1f} {r['map'] / max(r['cpu_minutes'], 1e-9):10.4f} "
              f"{speed}  {per_epoch}")


def plot(results: dict[str, dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x, label in zip(axes, ("epoch", "cpu_minutes"), ("epoch", "CPU minutes")):
        for recipe, r in results.items():
            ax.plot([p[x] for p in r["curve"]], [p["map"] for p in r["curve"]], marker="o", markersize=3,
                    label=recipe)
        ax.set(xlabel=label, ylabel="COCO AP", title=f"AP vs {label}", ylim=(0, None))
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    setup = SETUPS[args.setup]
    recipes = args.recipes.split(",") if args.recipes else list(setup.recipes)
    try:  # a wrong name fails now, not after the first runs
        [get_recipe(recipe) for recipe in recipes]
    except UsageError as error:
        raise SystemExit(f"benchmark_convergence: {error}") from None
    output = Path(args.output_dir).resolve() / args.setup
    initial = initial_model(setup.initial, output / "initial") if setup.initial else None
    prepare_data(train_args(args, setup, recipes[0], output / recipes[0], initial))
    speed = dict(steps=1, warmup=1) if args.quick else dict(steps=args.speed_steps)
    results = {}
    for recipe in recipes:
        run_dir = output / recipe
        arguments = train_args(args, setup, recipe, run_dir, initial)
        print(f"=== {args.setup}: recipe {recipe} -> {run_dir}", flush=True)
        results[recipe] = run_recipe(arguments, run_dir)
        if args.speed_steps:
            results[recipe]["images_per_second"] = round(train_step_speed(
                [*arguments, "--output-dir", str(output / "speed" / recipe)], **speed), 2)
        print(f"    AP {results[recipe]['map']:.4f} in {results[recipe]['cpu_minutes']:.1f} CPU minutes", flush=True)
    print_table(results)
    path = Path(args.plot) if args.plot else output / "convergence.png"
    plot(results, f"{args.setup}: {setup.description}", path)
    (output / "convergence.json").write_text(json.dumps({"setup": args.setup, "argv": sys.argv[1:],
                                                         "results": results}, indent=1))
    print(f"\nwrote {path} and {output / 'convergence.json'}")


if __name__ == "__main__":
    main()
