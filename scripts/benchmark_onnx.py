#!/usr/bin/env python
"""onnxruntime (CPU) against detrkit's PyTorch eager path, same process, same input, same thread count.

    nice -n 10 python scripts/benchmark_onnx.py [--models detr-resnet-50 deformable-detr] [--size 800 1066]

Random weights (presets), batch 1, fp32. Each model is exported with `detrkit export` (traced at a smaller size:
the graph's height and width are dynamic), then both run alternately `--repeats` times after one warm-up; the
table gives medians, the ratio and the largest difference of logits and boxes between them.
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["detr-resnet-50", "deformable-detr"])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1066), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
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
            model, _ = load_model(name)
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


if __name__ == "__main__":
    main()
