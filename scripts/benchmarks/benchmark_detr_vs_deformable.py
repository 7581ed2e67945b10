"""DETR vs Deformable DETR on the built-in data, same budget: COCO AP and AP_small per epoch, plotted.

The Deformable DETR paper's claim: it reaches DETR's accuracy with 10x fewer epochs, most visibly on small
objects. Both detectors here get the same of everything the comparison is not about:
- the same backbone weights: the ResNet-18 of the shipped demo checkpoint (trained on shapes-a), the only
  pretrained backbone available offline; everything after the backbone starts from random weights, as when
  the papers start from an ImageNet ResNet;
- the same transformer size (d_model 128, 3 encoder + 3 decoder layers, 8 heads, FFN 512, 100 queries) and
  auxiliary losses; each keeps its paper recipe (DETR: softmax + no-object weight, lr 1e-4; Deformable DETR:
  focal loss, lr 2e-4, 4 feature levels, 4 points, no box refinement or two-stage);
- the same data (shapes-b by default: other classes than the backbone saw), epochs, batch size, lr drop at
  2/3, augmentation and seed; an evaluation after every epoch.

    python scripts/benchmarks/benchmark_detr_vs_deformable.py                      # 24 epochs each, ~35 min on 2 cores
    python scripts/benchmarks/benchmark_detr_vs_deformable.py --epochs 50 --data shapes-a --backbone random

Writes <output-dir>/{detr,deformable}/ (each a full training run: history.jsonl, metrics.json, model/),
comparison.png (AP and AP_small per epoch, both models) and comparison.json; prints the per-epoch table and
the first epoch at which Deformable DETR matches DETR's final AP.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from detrkit.training.config import build_config
from detrkit.training.detection_data import load_split, resolve_source
from detrkit.training.history import read_history
from detrkit.training.train import train
from detrkit.families import DEFORMABLE_DETR, DETR
from detrkit.training.models import make_processor

DEMO_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "deformable-detr-shapes-a"
SHARED_ARCHITECTURE = dict(backbone="resnet18", d_model=128, encoder_layers=3, decoder_layers=3,
                           encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=512,
                           decoder_ffn_dim=512, num_queries=100, auxiliary_loss=True, dropout=0.0)
KINDS = ("detr", "deformable")
FAMILIES = {"detr": DETR, "deformable": DEFORMABLE_DETR}  # output folder name -> model family
LABELS = {kind: family.title for kind, family in FAMILIES.items()}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="shapes-b")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--backbone", default=str(DEMO_CHECKPOINT),
                        help="a detrkit checkpoint folder whose backbone both models start from, or 'random'")
    parser.add_argument("--max-train-minutes", type=float, default=None, help="per model")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--data-cache", default="~/.cache/detrkit/data")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output-dir", default="outputs/detr_vs_deformable")
    return parser.parse_args(argv)


def backbone_state(source: str) -> dict[str, torch.Tensor] | None:
    if source == "random":
        return None
    from safetensors.torch import load_file

    state = load_file(str(Path(source) / "model.safetensors"))
    state = {k: v.float() for k, v in state.items() if k.startswith("model.backbone.")}
    if not state:
        raise ValueError(f"--backbone {source}: its model.safetensors has no model.backbone.* weights")
    return state


def initial_model(kind: str, id2label: dict, backbone: dict | None, seed: int) -> torch.nn.Module:
    """The untrained detector of `kind` with the shared backbone weights loaded (every backbone tensor)."""
    torch.manual_seed(seed)
    config_class, model_class = FAMILIES[kind].config_class, FAMILIES[kind].detection_class
    labels = dict(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = model_class(config_class(**SHARED_ARCHITECTURE, **labels, freeze_backbone_batch_norm=backbone is not None))
    if backbone is not None:
        own = {k for k in model.state_dict() if k.startswith("model.backbone.")}
        missing = own - set(backbone)
        if missing:
            raise ValueError(f"backbone weights lack {len(missing)} tensor(s) of the {kind} model, e.g. "
                             f"{sorted(missing)[:3]} (is it a ResNet-18 checkpoint?)")
        model.load_state_dict({k: v for k, v in backbone.items() if k in own}, strict=False)
    return model


def run_config(args, kind: str, model_dir: Path, output: Path):
    return build_config(dict(
        model=str(model_dir), fallback_model=None, data=args.data, image_size=args.image_size,
        batch_size=args.batch_size, epochs=args.epochs, lr_drop_epoch=max(1, round(args.epochs * 2 / 3)),
        eval_every=1, seed=args.seed, num_workers=args.num_workers, overwrite_output_dir=True,
        max_train_minutes=args.max_train_minutes, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, data_cache=args.data_cache,
        backbone_policy="auto" if args.backbone != "random" else "scratch", checkpoint_every=0,
        log_with=None, drawings=False, output_dir=str(output)))


def train_one(args, kind: str) -> list[dict]:
    output = Path(args.output_dir) / kind
    init_dir = output / "init"
    probe = run_config(args, kind, init_dir, output)
    processor = make_processor(FAMILIES[kind], probe)
    id2label = load_split(resolve_source(probe, log=lambda *_: None), probe.train_split, probe).id2label
    model = initial_model(kind, id2label, backbone_state(args.backbone), args.seed)
    model.save_pretrained(init_dir)
    processor.save_pretrained(init_dir)
    print(f"\n=== {LABELS[kind]}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"backbone from {args.backbone} ===", flush=True)
    train(probe)
    return read_history(output / "history.jsonl")


def plot(histories: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(axes, ("map", "map_small"), ("COCO AP", "COCO AP_small")):
        for kind, records in histories.items():
            points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None and r[key] >= 0]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=LABELS[kind])
        ax.set(xlabel="epoch", ylabel=title, title=f"{title} per epoch, same budget", ylim=(0, None))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarise(histories: dict[str, list[dict]]) -> dict:
    rows = {kind: {r["epoch"]: r for r in records if "map" in r} for kind, records in histories.items()}
    epochs = sorted(set().union(*rows.values()))
    print(f"\n{'epoch':>5} | {'DETR AP':>8} {'AP_small':>8} | {'Deformable AP':>13} {'AP_small':>8}")
    for epoch in epochs:
        cells = [f"{rows[k][epoch]['map']:8.3f} {rows[k][epoch]['map_small']:8.3f}" if epoch in rows[k] else
                 f"{'-':>8} {'-':>8}" for k in KINDS]
        print(f"{epoch:>5} | {cells[0]} | {cells[1]:>22}")
    final = {k: max(rows[k].values(), key=lambda r: r["epoch"]) for k in KINDS if rows[k]}
    summary = {k: {"final_epoch": r["epoch"], "map": r["map"], "map_small": r["map_small"],
                   "seconds_per_epoch": r["elapsed_s"] / r["epoch"]} for k, r in final.items()}
    if len(final) == 2:
        target = final["detr"]["map"]
        reached = [e for e in sorted(rows["deformable"]) if rows["deformable"][e]["map"] >= target]
        summary["deformable_epoch_reaching_detr_final_map"] = reached[0] if reached else None
        print(f"\nDETR's final AP {target:.3f} after {final['detr']['epoch']} epochs; Deformable DETR "
              + (f"reaches it at epoch {reached[0]}" if reached else "does not reach it")
              + f" and ends at {final['deformable']['map']:.3f} (AP_small {final['deformable']['map_small']:.3f} vs "
              f"{final['detr']['map_small']:.3f}).")
        print("seconds per epoch: " + ", ".join(f"{LABELS[k]} {v['seconds_per_epoch']:.1f}"
                                                for k, v in summary.items() if isinstance(v, dict)))
    return summary


def main(argv=None):
    args = parse_args(argv)
    histories = {kind: train_one(args, kind) for kind in KINDS}
    output = Path(args.output_dir)
    plot(histories, output / "comparison.png")
    summary = summarise(histories)
    (output / "comparison.json").write_text(json.dumps({"args": vars(args), "summary": summary,
                                                        "histories": histories}, indent=1), encoding="utf-8")
    print(f"\nwrote {output / 'comparison.png'} and {output / 'comparison.json'}")


if __name__ == "__main__":
    main()
