"""Deformable DETR R50 on CPU: detrkit vs transformers' DeformableDetrForObjectDetection, measured in the same run.

Each case (implementation x forward / train step) runs in its own subprocess, so peak RSS is that case's alone.
Forward: eval mode, no_grad. Train step: forward + set loss (with auxiliary losses) + backward.
Random weights, fp32, a 1x3x800x1066 image (the paper's evaluation size for a 4:3 photo).

    python scripts/benchmarks/benchmark_deformable_detr.py                 # detrkit with and without its kernels
    python scripts/benchmarks/benchmark_deformable_detr.py --variant two-stage --repeats 2
    python scripts/benchmarks/benchmark_deformable_detr.py --modes train --kernels on --activation-checkpointing

detrkit's train step runs with its memory savers on, as `detrkit train` does on the CPU (`--memory-savers off`
measures the plain modules). `--activation-checkpointing` turns on transformers' activation checkpointing of the
encoder and decoder layers in both implementations.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

VARIANTS = {
    "plain": {},
    "box-refine": {"with_box_refine": True},
    "two-stage": {"with_box_refine": True, "two_stage": True},
}

CHILD = r"""
import json, resource, sys, time
import torch

implementation, mode, variant, threads, repeats, height, width, savers, checkpointing = sys.argv[1:10]
torch.set_num_threads(int(threads))
kwargs = dict(json.loads(variant), auxiliary_loss=True, num_labels=91)
torch.manual_seed(0)
if implementation == "transformers":
    import transformers
    model = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(**kwargs))
else:
    from detrkit.modeling import DeformableDetrConfig, DeformableDetrForObjectDetection
    model = DeformableDetrForObjectDetection(DeformableDetrConfig(**kwargs))
    if mode == "train" and savers == "on":
        from detrkit.training.memory_savers import apply_memory_savers
        apply_memory_savers(model)
if checkpointing == "on":
    model.activation_checkpointing_enable()
pixel_values = torch.randn(1, 3, int(height), int(width))
labels = [{"class_labels": torch.tensor([1, 17, 42]),
           "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.2, 0.3, 0.1, 0.2], [0.7, 0.6, 0.2, 0.5]])}]

def step():
    if mode == "forward":
        with torch.no_grad():
            model(pixel_values)
    else:
        model.zero_grad(set_to_none=True)
        model(pixel_values, labels=labels).loss.backward()

model.train(mode == "train")
step()  # warm-up: kernel load, allocator, lazy init
times = []
for _ in range(int(repeats)):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
print(json.dumps({"times": times, "peak_gib": peak_gib}))
"""


def run_case(implementation, mode, args, disable_kernels=False):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["DETRKIT_DISABLE_KERNELS"] = "1" if disable_kernels else "0"
    command = [sys.executable, "-c", CHILD, implementation, mode, json.dumps(VARIANTS[args.variant]),
               str(args.threads), str(args.repeats), str(args.height), str(args.width), args.memory_savers,
               "on" if args.activation_checkpointing else "off"]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{implementation} {mode} failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return statistics.median(measured["times"]), measured["peak_gib"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="plain")
    parser.add_argument("--modes", nargs="+", choices=["forward", "train"], default=["forward", "train"])
    parser.add_argument("--kernels", choices=["both", "on", "off"], default="both",
                        help="detrkit with its compiled MSDA kernel, with the PyTorch reference, or both")
    parser.add_argument("--memory-savers", choices=["on", "off"], default="on",
                        help="detrkit's train step with detrkit.training.memory_savers (the CPU training default)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="transformers' activation checkpointing of the encoder and decoder layers (both sides)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    args = parser.parse_args()

    detrkit_cases = {"both": [("detrkit (kernels)", False), ("detrkit (no kernels)", True)],
                     "on": [("detrkit (kernels)", False)], "off": [("detrkit (no kernels)", True)]}[args.kernels]
    print(f"Deformable DETR R50 ({args.variant}), 1x3x{args.height}x{args.width}, fp32, {args.threads} threads, "
          f"median of {args.repeats}")
    for mode in args.modes:
        reference_time, reference_memory = run_case("transformers", mode, args)
        print(f"\n{mode:>7}  transformers           {reference_time * 1000:8.0f} ms  {reference_memory:5.2f} GiB")
        for label, disable in detrkit_cases:
            elapsed, memory = run_case("detrkit", mode, args, disable_kernels=disable)
            print(f"{mode:>7}  {label:<22} {elapsed * 1000:8.0f} ms  {memory:5.2f} GiB   "
                  f"speed-up x{reference_time / elapsed:.2f}, memory x{memory / reference_memory:.2f}")


if __name__ == "__main__":
    main()
