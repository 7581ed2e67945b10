#!/usr/bin/env python
"""onnxruntime (CPU) against detrkit's PyTorch eager path, same process, same input, same thread count.

    nice -n 10 python scripts/benchmarks/benchmark_onnx.py [--models detr-resnet-50 deformable-detr] [--size 800 1066] [--op]

Random weights (presets), batch 1, fp32. Each model is exported with `detrkit export` (traced at a smaller size:
the graph's height and width are dynamic); Deformable DETR twice: the portable file (deformable attention as
standard ops, one GridSample) and, when onnxruntime-extensions is installed, `--msda-op detrkit` (one custom node
per deformable attention, run by detrkit's C++ kernel). Then all run in turn `--repeats` times after one warm-up;
the table gives medians, the ratio to PyTorch and the largest difference of logits and boxes from PyTorch's.
`PRESET:act` (e.g. detr-resnet-50:act) is that DETR preset with ACT's encoder (encoder_attention_type "act").
`--op` also times the deformable attention op alone at the encoder's shape for that input: the portable ONNX
graph and the custom node in onnxruntime, detrkit's C++ kernel called directly, and the PyTorch reference.

onnxruntime runs with `--threads` intra-op threads (PyTorch, and the kernel inside the custom node, with as many).
On a machine other jobs share, wall times swing and multi-threaded runs lose most (threads wait for each other):
`--threads 1 --clock cpu` compares the CPU time each path needs, which other jobs hardly change.
"""
import argparse
import importlib.util
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from detrkit.deploy.export import export_onnx
from detrkit.deploy.onnx_custom_ops import onnx_session
from detrkit.families import DEFORMABLE_DETR, family_of
from detrkit.inference.loading import load_for_inference


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed(function) -> float:
    start = clock()
    function()
    return (clock() - start) * 1000


def session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def custom_op_available() -> bool:
    return importlib.util.find_spec("onnxruntime_extensions") is not None


def encoder_inputs(size):
    """Deformable DETR R50's encoder self-attention at input `size`: value, shapes, starts, locations, weights."""
    shapes = [(-(-size[0] // stride), -(-size[1] // stride)) for stride in (8, 16, 32)]  # C3-C5
    shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))  # the stride-2 conv on C5
    total, heads, head_dim, levels, points = sum(h * w for h, w in shapes), 8, 32, 4, 4
    generator = torch.Generator().manual_seed(0)
    value = torch.randn(1, total, heads, head_dim, generator=generator)
    locations = torch.rand(1, total, heads, levels, points, 2, generator=generator)
    weights = torch.rand(1, total, heads, levels * points, generator=generator).softmax(-1)
    spatial_shapes = torch.tensor(shapes)
    start = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
    return value, shapes, spatial_shapes, start, locations, weights.view(1, total, heads, levels, points)


def op_benchmark(size, repeats, threads):
    """Deformable attention alone, Deformable DETR R50's encoder shape, each way it can run."""
    from detrkit.deploy.onnx_custom_ops import OPSET, msda_node
    from detrkit.kernels import multi_scale_deformable_attention as kernel
    from detrkit.modeling.deformable_sampling import multi_scale_deformable_attention as reference

    value, shapes, spatial_shapes, start, locations, weights = encoder_inputs(size)

    class Op(torch.nn.Module):  # calls the sampling op the way the model does while an export traces it
        def __init__(self, sampling_function):
            super().__init__()
            self.sampling_function = sampling_function

        def forward(self, value, locations, weights):
            return self.sampling_function(value, shapes, start, locations, weights)

    feed = {"value": value.numpy(), "locations": locations.numpy(), "weights": weights.numpy()}
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, custom in (("onnxruntime, portable graph (GridSample)", False),
                             ("onnxruntime, custom node (detrkit kernel)", True)):
            if custom and not custom_op_available():
                continue
            path = str(Path(folder) / f"msda-{custom}.onnx")
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # sizes taken in Python: fixed here anyway
                torch.onnx.export(Op(msda_node if custom else reference), (value, locations, weights), path, dynamo=False, opset_version=17,
                                  input_names=list(feed), custom_opsets=OPSET if custom else None)
            runs[name] = (lambda session: lambda: session.run(None, feed))(onnx_session(path, session_options(threads)))
        runs["detrkit C++ kernel, called directly"] = lambda: kernel(value, spatial_shapes, start, locations, weights)
        runs["PyTorch reference (grid_sample per level)"] = lambda: reference(value, spatial_shapes, start, locations,
                                                                                weights)
        with torch.inference_mode():
            for run in runs.values():
                run()
            times = {name: [] for name in runs}
            for _ in range(repeats):
                for name, run in runs.items():
                    times[name].append(timed(run))
    total, heads, head_dim = value.shape[1:]
    print(f"\ndeformable attention op, {total} queries, {heads} heads x {head_dim}, {len(shapes)} levels x "
          f"{locations.shape[-2]} points (medians):")
    for name, values in times.items():
        print(f"  {name}: {statistics.median(values):,.1f} ms")


def load(name: str):
    """A model of `detrkit export`'s kinds, or `PRESET:act`: the DETR preset with ACT's encoder, random weights."""
    if not name.endswith(":act"):
        return load_for_inference(name)[0]
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
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (with --threads 1 on a busy machine)")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]

    torch.set_num_threads(args.threads)  # PyTorch, and the kernel inside the custom node
    pixel_values = torch.randn(1, 3, *args.size, generator=torch.Generator().manual_seed(0))
    feed = {"pixel_values": pixel_values.numpy()}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            torch.manual_seed(0)
            model = load(name)  # PRESET:act for ACT (see load)
            variants = ["grid_sample"] + ["detrkit"] * (family_of(model) is DEFORMABLE_DETR and custom_op_available())
            sessions = {}
            for msda_op in variants:
                path = export_onnx(model, Path(folder) / f"{name}-{msda_op}.onnx", example_size=(512, 640),
                                   check=False, msda_op=msda_op)
                sessions[msda_op] = onnx_session(path, session_options(args.threads))

            @torch.inference_mode()
            def eager():
                return model(pixel_values)

            expected = eager()
            runs = {"pytorch": eager}
            differences = {}
            for msda_op, session in sessions.items():
                logits, boxes = session.run(["logits", "pred_boxes"], feed)
                differences[msda_op] = max(float((torch.from_numpy(logits) - expected.logits).abs().max()),
                                           float((torch.from_numpy(boxes) - expected.pred_boxes).abs().max()))
                runs[msda_op] = (lambda session: lambda: session.run(None, feed))(session)
            times = {key: [] for key in runs}
            for _ in range(args.repeats):
                for key, run in runs.items():
                    times[key].append(timed(run))
            medians = {key: statistics.median(values) for key, values in times.items()}
            for msda_op in sessions:
                rows.append((name, msda_op, medians["pytorch"], medians[msda_op], differences[msda_op]))
            print(f"{name}: " + ", ".join(f"{key} {ms:.0f} ms" for key, ms in medians.items()), flush=True)
            del model, sessions, runs
    print(f"\n| model, 1x3x{args.size[0]}x{args.size[1]}, {args.threads} threads, {args.clock} time | "
          "deformable attention in the file | detrkit PyTorch eager | onnxruntime CPU | onnxruntime / PyTorch | "
          "max abs diff |")
    print("|---|---|---|---|---|---|")
    for name, msda_op, pytorch, runtime, difference in rows:
        kind = {"grid_sample": "standard ops (portable)", "detrkit": "custom node, detrkit kernel"}[msda_op]
        kind = kind if "deformable" in name else "-"
        print(f"| {name} | {kind} | {pytorch:,.0f} ms | {runtime:,.0f} ms | {runtime / pytorch:.2f}x | "
              f"{difference:.1e} |")
    if args.op:
        op_benchmark(tuple(args.size), args.repeats, args.threads)


if __name__ == "__main__":
    main()
