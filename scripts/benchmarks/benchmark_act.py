"""ACT (adaptive clustering attention) against exact attention in DETR's encoder, in one run.

Part 1, cost (random weights, one 800x1333 image, `--models detr-resnet-50 detr-resnet-50-dc5`): the backbone runs
once; then the exact encoder and ACT encoders with L = 32/24/20/16 hash rounds (the same weights) run on the same
encoder input, in turn, `--repeats` times each. Per variant: encoder GFLOPs (torch.utils.flop_counter counts
matmuls, SDPA and convolutions; ACT's hashing projection is a matmul and is counted, its sort / unique / scatter /
gather are not FLOPs it knows and are not counted), median encoder latency, peak memory added by the encoder
(resident set high-water mark, reset before each pass through /proc/self/clear_refs), clusters per layer (mean
over heads). Random weights make the clusters unlike a trained model's: the trained part below is the one to read
for clusters and accuracy.

Part 2, accuracy (`--checkpoint`, a trained DETR such as checkpoints/detr-shapes-a, on its built-in data): AP
against the data's ground truth for the exact model and ACT at each L, and agreement: AP of ACT's predictions
scored against the exact model's detections (score >= --agreement-threshold) as ground truth. `--mtkd NAME=PATH`
adds ACT students fine-tuned with MTKD (`detrkit train --distill-from`), evaluated at their own saved L.

    nice -n 10 python scripts/benchmarks/benchmark_act.py --output-dir outputs/benchmark_act \
        --checkpoint checkpoints/detr-shapes-a --data ~/.cache/detrkit/data/shapes-a-128px-6144-256

Writes results.json, a Markdown table (table.md) and a plot (act_tradeoff.png) to --output-dir.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

ROUNDS = (32, 24, 20, 16)


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set


@torch.no_grad()
def encoder_input(model, image):
    """(src, pos, key_padding_mask) that DETR's encoder receives for `image` (B, 3, H, W)."""
    detr = model.model
    mask = torch.ones(image.shape[0], *image.shape[2:], dtype=torch.bool)
    feature_map, mask = detr.backbone(image, mask)[-1]
    pos = detr.position_embedding(mask, dtype=image.dtype).flatten(2).transpose(1, 2)
    src = detr.input_projection(feature_map).flatten(2).transpose(1, 2)
    return src, pos, None


def act_encoder(exact_encoder, config, rounds: int):
    """A copy of the encoder whose self-attentions are ACT with `rounds` hash rounds (same weights)."""
    from detrkit.modeling.detr_transformer import Encoder

    act_config = copy.deepcopy(config)
    act_config.encoder_attention_type, act_config.act_hash_rounds = "act", rounds
    encoder = Encoder(act_config).eval()
    encoder.load_state_dict(exact_encoder.state_dict())
    return encoder


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's FLOP counter knows the CUDA attention kernels but not the CPU one SDPA dispatches to here
CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


@torch.no_grad()
def measure(encoder, inputs, repeats: int) -> dict:
    """GFLOPs; median wall time and process CPU time (all threads; steadier than wall time on a loaded machine);
    peak resident memory added by one pass."""
    src, pos, mask = inputs
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        encoder(src, pos, mask)
    times, cpu_times, peaks = [], [], []
    for _ in range(repeats):
        before = rss_kib("VmRSS")
        reset_peak_rss()
        start, cpu_start = time.perf_counter(), time.process_time()
        encoder(src, pos, mask)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        peaks.append(max(0, rss_kib("VmHWM") - before) / 2**20)
    clusters = [float(layer.self_attn.num_clusters.float().mean()) for layer in encoder.layers
                if getattr(layer.self_attn, "num_clusters", None) is not None]
    return {"gflops": counter.get_total_flops() / 1e9, "latency_s": statistics.median(times),
            "cpu_s": statistics.median(cpu_times),
            "peak_gib": max(peaks), "clusters_per_layer": clusters}


def cost_part(preset: str, height: int, width: int, repeats: int, log=print) -> list[dict]:
    from detrkit.modeling import DetrForObjectDetection, config_from_preset

    torch.manual_seed(0)
    model = DetrForObjectDetection(config_from_preset(preset)).eval()
    inputs = encoder_input(model, torch.randn(1, 3, height, width))
    tokens = inputs[0].shape[1]
    exact = model.model.encoder
    variants = [("exact", exact)] + [(f"ACT L={r}", act_encoder(exact, model.config, r)) for r in ROUNDS]
    rows = []
    for name, encoder in variants:
        row = {"model": preset, "variant": name, "tokens": tokens, **measure(encoder, inputs, repeats)}
        rows.append(row)
        log(f"{preset} {name}: {row['gflops']:.1f} GFLOPs, {row['latency_s']:.3f} s ({row['cpu_s']:.3f} CPU s), "
            f"+{row['peak_gib']:.2f} GiB, "
            f"clusters {[round(c) for c in row['clusters_per_layer']]}")
    for row in rows:
        row["latency_vs_exact"] = row["latency_s"] / rows[0]["latency_s"]
        row["gflops_vs_exact"] = row["gflops"] / rows[0]["gflops"]
        row["cpu_vs_exact"] = row["cpu_s"] / rows[0]["cpu_s"]
    return rows


def eval_loader(data_root: str, processor, batch_size: int):
    from detrkit.data.collator import DetectionCollator
    from detrkit.data.dataset import DetectionDataset
    from detrkit.data.layouts import load_detection_data

    records = load_detection_data(data_root, split="val", on_error="raise")
    loader = torch.utils.data.DataLoader(DetectionDataset(records, processor), batch_size=batch_size,
                                         collate_fn=DetectionCollator(processor))
    return records, loader


def as_references(predictions: dict, threshold: float, top: int | None = None) -> dict:
    """image_id -> COCO-style reference built from a model's detections with score >= threshold, or its `top`
    highest-scoring ones (for a model too weak to pass any threshold)."""
    references = {}
    for image_id, det in predictions.items():
        keep = det["scores"] >= threshold if top is None else det["scores"].argsort(descending=True)[:top]
        annotations = []
        for (x0, y0, x1, y1), label in zip(det["boxes"][keep].tolist(), det["labels"][keep].tolist()):
            annotations.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": int(label),
                                "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        references[image_id] = {"image_id": image_id, "annotations": annotations}
    return references


def accuracy_part(checkpoint: str, data_root: str, mtkd: dict, threshold: float, top: int | None, batch_size: int,
                  log=print):
    from transformers import AutoImageProcessor

    import detrkit.processing  # noqa: F401  (registers detrkit's processors: checkpoints/ folders name no code)
    from detrkit.modeling import DetrForObjectDetection
    from detrkit.metrics.coco_ap import coco_evaluate
    from detrkit.inference.coco_evaluation import predict

    processor = AutoImageProcessor.from_pretrained(checkpoint)
    records, loader = eval_loader(data_root, processor, batch_size)
    ids = [r.image_id for r in records]

    def scores(model):
        predictions = predict(model.eval(), loader, processor)
        vs_truth = coco_evaluate([predictions[i] for i in ids], [r.target() for r in records], records.id2label)
        return predictions, vs_truth

    exact_predictions, exact_truth = scores(DetrForObjectDetection.from_pretrained(checkpoint))
    reference = as_references(exact_predictions, threshold, top)
    rows = [{"variant": "exact", "ap": exact_truth["map"], "ap50": exact_truth["map_50"], "agreement_ap": 1.0}]
    candidates = [(f"ACT L={r}", checkpoint, {"encoder_attention_type": "act", "act_hash_rounds": r}) for r in ROUNDS]
    candidates += [(f"{name} (MTKD)", path, {}) for name, path in mtkd.items()]
    for name, path, overrides in candidates:
        model = DetrForObjectDetection.from_pretrained(path, **overrides)
        predictions, truth = scores(model)
        agreement = coco_evaluate([predictions[i] for i in ids], [reference[i] for i in ids], records.id2label)
        clusters = [float(layer.self_attn.num_clusters.float().mean()) for layer in model.model.encoder.layers]
        rows.append({"variant": name, "ap": truth["map"], "ap50": truth["map_50"], "agreement_ap": agreement["map"],
                     "clusters_last_batch": clusters})
        log(f"{name}: AP {truth['map']:.4f} (exact {exact_truth['map']:.4f}), agreement AP {agreement['map']:.4f}, "
            f"clusters {[round(c, 1) for c in clusters]}")
    return rows


def markdown(cost_rows: list[dict], accuracy_rows: list[dict]) -> str:
    lines = ["| model | attention | tokens | encoder GFLOPs | x exact | latency (s) | x exact | CPU time (s) | "
             "x exact | peak (GiB) | clusters per layer |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in cost_rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['tokens']} | {r['gflops']:.1f} | "
                     f"{r['gflops_vs_exact']:.2f} | {r['latency_s']:.3f} | {r['latency_vs_exact']:.2f} | "
                     f"{r['cpu_s']:.3f} | {r['cpu_vs_exact']:.2f} | "
                     f"{r['peak_gib']:.2f} | {', '.join(str(round(c)) for c in r['clusters_per_layer']) or '-'} |")
    if accuracy_rows:
        lines += ["", "| trained DETR | AP | AP50 | agreement AP | clusters per layer (last batch) |",
                  "|---|---|---|---|---|"]
        for r in accuracy_rows:
            clusters = ", ".join(f"{c:.1f}" for c in r.get("clusters_last_batch", [])) or "-"
            lines.append(f"| {r['variant']} | {r['ap']:.4f} | {r['ap50']:.4f} | {r['agreement_ap']:.4f} | "
                         f"{clusters} |")
    return "\n".join(lines) + "\n"


def plot(cost_rows: list[dict], accuracy_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if accuracy_rows else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    for model in dict.fromkeys(r["model"] for r in cost_rows):
        rows = [r for r in cost_rows if r["model"] == model and r["variant"] != "exact"]
        rounds = [int(r["variant"].split("=")[1]) for r in rows]
        ax.plot(rounds, [r["latency_vs_exact"] for r in rows], "o-", label=f"{model} latency")
        ax.plot(rounds, [r["cpu_vs_exact"] for r in rows], "^:", label=f"{model} CPU time")
        ax.plot(rounds, [r["gflops_vs_exact"] for r in rows], "s--", label=f"{model} GFLOPs")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(xlabel="hash rounds L", ylabel="ACT / exact", title="encoder cost, 800x1333, random weights")
    ax.legend(fontsize=7)
    if accuracy_rows:
        ax = axes[0][1]
        rows = [r for r in accuracy_rows if r["variant"].startswith("ACT") and "MTKD" not in r["variant"]]
        rounds = [int(r["variant"].split("=")[1]) for r in rows]
        ax.plot(rounds, [r["ap"] for r in rows], "o-", label="ACT AP")
        ax.plot(rounds, [r["agreement_ap"] for r in rows], "s--", label="ACT agreement AP")
        ax.axhline(accuracy_rows[0]["ap"], color="gray", lw=0.8, label="exact AP")
        ax.set(xlabel="hash rounds L", ylabel="AP", title="trained DETR (shapes-a val)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_mtkd(items: list[str]) -> dict:
    pairs = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--mtkd {item!r}: expected NAME=PATH")
        name, path = item.split("=", 1)
        pairs[name] = path
    return pairs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="outputs/benchmark_act")
    parser.add_argument("--models", nargs="*", default=["detr-resnet-50", "detr-resnet-50-dc5"],
                        help="presets for the cost part (none: skip it)")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="a trained DETR for the accuracy part")
    parser.add_argument("--data", default=None, help="the checkpoint's data folder (COCO layout with a val split)")
    parser.add_argument("--mtkd", nargs="*", default=[], metavar="NAME=PATH", help="MTKD-trained ACT students")
    parser.add_argument("--agreement-threshold", type=float, default=0.5,
                        help="the exact model's detections above this score are the agreement ground truth")
    parser.add_argument("--agreement-top", type=int, default=None,
                        help="instead, its N highest-scoring detections per image (a weak model)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    if args.checkpoint and not args.data:
        parser.error("--checkpoint needs --data (its evaluation data)")
    torch.set_num_threads(args.threads)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    cost_rows = [row for preset in args.models for row in cost_part(preset, args.height, args.width, args.repeats)]
    accuracy_rows = []
    if args.checkpoint:
        accuracy_rows = accuracy_part(args.checkpoint, str(Path(args.data).expanduser()),
                                      parse_mtkd(args.mtkd), args.agreement_threshold, args.agreement_top,
                                      args.batch_size)
    results = {"torch": torch.__version__, "threads": args.threads, "input": [args.height, args.width],
               "cost": cost_rows, "accuracy": accuracy_rows, "agreement_threshold": args.agreement_threshold,
               "agreement_top": args.agreement_top,
               "checkpoint": args.checkpoint}
    (output / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(cost_rows, accuracy_rows)
    (output / "table.md").write_text(table)
    plot(cost_rows, accuracy_rows, output / "act_tradeoff.png")
    print(table)
    print(f"wrote {output}/results.json, table.md, act_tradeoff.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
