#!/usr/bin/env python
"""onnxruntime (CPU) against detrkit's PyTorch eager path, same process, same input, same thread count.

    nice -n 10 python scripts/benchmark_onnx.py [--models detr-resnet-50 deformable-detr] [--size 800 1066]

Random weights (presets), batch 1, fp32. Each model is exported with `detrkit export` (traced at a smaller size:
the graph's height and width are dynamic), then both run alternately `--repeats` times after one warm-up; the
table gives medians, the ratio and the largest difference of logits and boxes between them. `PRESET:act` (e.g.
detr-resnet-50:act) is that DETR preset with ACT's encoder (encoder_attention_type "act").
`--op` also times the deformable attention op alone at the encoder's shape for that input: its ONNX graph (the
grid_sample path the export uses) in onnxruntime, detrkit's C++ kernel (what a custom ONNX op could at best run)
and the PyTorch reference.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from detrkit.deploy.export import export_onnx
from detrkit.deploy.loading import load_model


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000


def op_benchmark(size, repeats, options):
    """Deformable attention alone, Deformable DETR R50's encoder shape: onnxruntime vs kernel vs reference."""
    import onnxruntime as ort

    from detrkit.kernels import multi_scale_deformable_attention as kernel
    from detrkit.modeling.multi_scale_deformable_attention import multi_scale_deformable_attention as reference

    shapes = [(-(-size[0] // stride), -(-size[1] // stride)) for stride in (8, 16, 32)]  # C3-C5
    shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))  # the stride-2 conv on C5
    total, heads, head_dim, levels, points = sum(h * w for h, w in shapes), 8, 32, 4, 4
    generator = torch.Generator().manual_seed(0)
    value = torch.randn(1, total, heads, head_dim, generator=generator)
    locations = torch.rand(1, total, heads, levels, points, 2, generator=generator)
    weights = torch.rand(1, total, heads, levels * points, generator=generator).softmax(-1).view(1, total, heads, levels, points)
    spatial_shapes = torch.tensor(shapes)
    start = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])

    class Op(torch.nn.Module):
        def forward(self, value, locations, weights):
            return reference(value, shapes, start, locations, weights)

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "msda.onnx")
        torch.onnx.export(Op(), (value, locations, weights), path, dynamo=False, opset_version=17,
                          input_names=["value", "locations", "weights"])
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {"value": value.numpy(), "locations": locations.numpy(), "weights": weights.numpy()}
        runs = {"onnxruntime (grid_sample graph)": lambda: session.run(None, feed),
                "detrkit C++ kernel": lambda: kernel(value, spatial_shapes, start, locations, weights),
                "PyTorch reference (grid_sample)": lambda: reference(value, spatial_shapes, start, locations, weights)}
        with torch.inference_mode():
            for run in runs.values():
                run()
            times = {name: statistics.median(timed(run) for _ in range(repeats)) for name, run in runs.items()}
    print(f"\ndeformable attention op, {total} queries, {heads} heads x {head_dim}, {levels} levels x {points} points:")
    for name, ms in times.items():
        print(f"  {name}: {ms:,.1f} ms")


def load(name: str):
    """A model of `detrkit export`'s kinds, or `PRESET:act`: the DETR preset with ACT's encoder, random weights."""
    if not name.endswith(":act"):
        return load_model(name)[0]
    from detrkit.modeling import DetrForObjectDetection, config_from_preset

    config = config_from_preset(name[:-len(":act")], use_pretrained_backbone=False, encoder_attention_type="act")
    return DetrForObjectDetection(config).eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["detr-resnet-50", "deformable-detr"])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1066), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--op", action="store_true", help="also time the deformable attention op alone")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    pixel_values = torch.randn(1, 3, *args.size, generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            torch.manual_seed(0)
            model = load(name)
            path = export_onnx(model, Path(folder) / f"{name}.onnx", example_size=(512, 640), check=False)
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {"pixel_values": pixel_values.numpy()}

            @torch.inference_mode()
            def eager():
                return model(pixel_values)

            expected, (logits, boxes) = eager(), session.run(["logits", "pred_boxes"], feed)
            difference = max(float((torch.from_numpy(logits) - expected.logits).abs().max()),
                             float((torch.from_numpy(boxes) - expected.pred_boxes).abs().max()))
            times = {"pytorch": [], "onnxruntime": []}
            for _ in range(args.repeats):
                times["pytorch"].append(timed(eager))
                times["onnxruntime"].append(timed(lambda: session.run(None, feed)))
            pytorch, runtime = (statistics.median(times[k]) for k in ("pytorch", "onnxruntime"))
            rows.append((name, pytorch, runtime, difference))
            print(f"{name}: pytorch {pytorch:.0f} ms, onnxruntime {runtime:.0f} ms, max |diff| {difference:.1e}",
                  flush=True)
            del model, session
    print(f"\n| model, 1x3x{args.size[0]}x{args.size[1]}, {args.threads} threads | detrkit PyTorch eager | "
          "onnxruntime CPU | onnxruntime / PyTorch | max abs diff |")
    print("|---|---|---|---|---|")
    for name, pytorch, runtime, difference in rows:
        print(f"| {name} | {pytorch:,.0f} ms | {runtime:,.0f} ms | {runtime / pytorch:.2f}x | {difference:.1e} |")
    if args.op:
        op_benchmark(tuple(args.size), args.repeats, options)


if __name__ == "__main__":
    main()
