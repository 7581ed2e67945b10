"""Benchmark multi-scale deformable attention: detrkit kernel vs the PyTorch reference vs transformers.

Shape: the Deformable DETR encoder on one 800x1066 image (levels 100x134, 50x67, 25x34, 13x17 -> 17,821
queries; 8 heads x 32 channels, 4 levels x 4 points). Sampling locations are what a trained encoder
produces: each query's reference point (its pixel centre) plus offsets of a few pixels, softmax weights.

    python scripts/benchmarks/benchmark_msda.py                       # CPU, fp32, 2 threads
    python scripts/benchmarks/benchmark_msda.py --device cuda --dtypes float32 float16 bfloat16

Prints milliseconds (median of --repeat runs) and the speed-up of the kernel over each baseline, all
measured in the same run.
"""
import argparse
import statistics
import time

import torch

from detrkit.kernels import kernel_status, load_kernel, multi_scale_deformable_attention
from detrkit.modeling.deformable_sampling import multi_scale_deformable_attention as reference

SHAPES = [(100, 134), (50, 67), (25, 34), (13, 17)]


def make_inputs(batch, heads, head_dim, points, dtype, device, offset_pixels=4.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(SHAPES, dtype=torch.long)
    sizes = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    length, levels = int(sizes.sum()), len(SHAPES)
    # Reference points: pixel centres of every level, normalised; the same point is used on all levels.
    centres = torch.cat([torch.stack(torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                                                    indexing="ij")[::-1], -1).reshape(-1, 2) for h, w in SHAPES])
    offsets = torch.randn(batch, length, heads, levels, points, 2, generator=generator) * offset_pixels
    locations = centres[None, :, None, None, None, :] + offsets / shapes.flip(-1)[None, None, None, :, None, :]
    weights = torch.randn(batch, length, heads, levels * points, generator=generator).softmax(-1)
    value = torch.randn(batch, length, heads, head_dim, generator=generator)
    to = dict(device=device, dtype=dtype)
    return (value.to(**to), shapes.to(device), starts.to(device), locations.to(**to),
            weights.view(batch, length, heads, levels, points).to(**to))


def timeit(fn, repeat, device):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    fn()  # warm-up (and lazy build)
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    status = load_kernel(device.type)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, kernel: "
          f"{'loaded' if status.loaded else 'NOT loaded: ' + str(status.error)}")

    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention
    hf_module = MultiScaleDeformableAttention()

    def transformers_fn(value, shapes, starts, locations, weights):
        return hf_module(value, shapes, SHAPES, starts, locations, weights, 64)

    candidates = {"kernel": multi_scale_deformable_attention, "reference": reference, "transformers": transformers_fn}
    print(f"{'dtype':9s} {'pass':9s} " + " ".join(f"{name:>14s}" for name in candidates)
          + "   kernel speed-up vs reference / transformers")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        inputs = make_inputs(args.batch, 8, 32, 4, dtype, device)
        for mode in ("forward", "fwd+bwd"):
            row = {}
            for name, fn in candidates.items():
                value, shapes, starts, locations, weights = [t.clone() for t in inputs]
                if mode == "forward":
                    def run(fn=fn):
                        with torch.no_grad():
                            fn(value, shapes, starts, locations, weights)
                else:
                    for t in (value, locations, weights):
                        t.requires_grad_()
                    grad = torch.randn(args.batch, locations.shape[1], 256, device=device, dtype=dtype)

                    def run(fn=fn):
                        output = fn(value, shapes, starts, locations, weights)
                        torch.autograd.backward(output, grad)
                row[name] = timeit(run, args.repeat, device)
            print(f"{dtype_name:9s} {mode:9s} " + " ".join(f"{row[n]:11.2f} ms" for n in candidates)
                  + f"   {row['reference'] / row['kernel']:6.1f}x / {row['transformers'] / row['kernel']:6.1f}x")
    print("kernel status:", {k: (v.loaded, v.error) for k, v in kernel_status().items()})


if __name__ == "__main__":
    main()
