"""DETR R50 forward on CPU: detrkit vs transformers' DetrForObjectDetection, same run, same input.

Each (implementation, measurement) runs in its own subprocess so peak RSS belongs to one model only.
Random weights, fp32, 1x3x800x1066 by default. Prints median latency, peak RSS and the ratios
(transformers / detrkit: above 1 means detrkit is faster / smaller).

    python scripts/benchmarks/benchmark_detr.py [--threads 2] [--repeats 5] [--rounds 2] [--height 800 --width 1066]

On a shared machine, rounds alternate the two implementations so load changes hit both alike.
"""

import argparse
import json
import statistics
import subprocess
import sys

import torch
import transformers

WORKER = """
import json, resource, sys, time, torch
impl, threads, repeats, height, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
if impl == "detrkit":
    from detrkit.modeling import DetrConfig, DetrForObjectDetection
    model = DetrForObjectDetection(DetrConfig(num_labels=91))
else:
    import transformers
    model = transformers.DetrForObjectDetection(transformers.DetrConfig(num_labels=91, use_pretrained_backbone=False))
model.eval()
pixel_values = torch.randn(1, 3, height, width)
pixel_mask = torch.ones(1, height, width, dtype=torch.long)
times = []
with torch.inference_mode():
    model(pixel_values, pixel_mask=pixel_mask)  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        model(pixel_values, pixel_mask=pixel_mask)
        times.append(time.perf_counter() - start)
rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
print(json.dumps({"times": times, "rss_gib": rss_gib}))
"""


def run(impl, args):
    result = subprocess.run(
        [sys.executable, "-c", WORKER, impl, str(args.threads), str(args.repeats), str(args.height), str(args.width)],
        capture_output=True, text=True,
    )
    if result.returncode:
        raise SystemExit(f"{impl} worker failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    args = parser.parse_args()
    print(f"DETR R50 forward, 1x3x{args.height}x{args.width}, fp32, {args.threads} threads, "
          f"{args.rounds} rounds x {args.repeats} runs, torch {torch.__version__}, transformers {transformers.__version__}")
    results = {impl: {"times": [], "rss_gib": 0.0} for impl in ("transformers", "detrkit")}
    for _ in range(args.rounds):
        for impl, result in results.items():
            run_result = run(impl, args)
            result["times"] += run_result["times"]
            result["rss_gib"] = max(result["rss_gib"], run_result["rss_gib"])
    for impl, result in results.items():
        median = statistics.median(result["times"]) * 1000
        print(f"  {impl:12s} median {median:8.1f} ms   peak RSS {result['rss_gib']:.2f} GiB")
    t_ref, t_ours = (statistics.median(results[k]["times"]) for k in ("transformers", "detrkit"))
    m_ref, m_ours = (results[k]["rss_gib"] for k in ("transformers", "detrkit"))
    print(f"  speed-up (transformers / detrkit latency): {t_ref / t_ours:.2f}x")
    print(f"  memory ratio (transformers / detrkit peak RSS): {m_ref / m_ours:.2f}x")


if __name__ == "__main__":
    main()
