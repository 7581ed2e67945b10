"""Panoptic post-processing time of detrkit's DetrImageProcessor against transformers', same run, same outputs.

Workload: 2 images x 100 queries, COCO panoptic's 250 classes (+ "no object"), mask logits at
1/4 of 800x1066 (a noisy disc per query, the discs tiling the image so that segments survive the overlap test as
a trained model's do), target size 800x1066, stuff classes fused. Checks that both give the same segments
(without fusing), prints both median times and their ratio; the machine's noise cancels in the ratio.

detrkit runs its fused CPU kernel (detrkit.kernels.panoptic_merge) when it builds; `--no-kernel` measures the
PyTorch path it falls back to instead.

    python scripts/benchmarks/benchmark_panoptic.py [--repeats 5] [--threads 2] [--kept 100] [--no-kernel]
"""
import argparse
import os
import time
from types import SimpleNamespace

import numpy as np
import torch
from transformers import DetrImageProcessor as TransformersDetrImageProcessor

from detrkit.kernels.panoptic_merge import kernel_ready
from detrkit.processing import DetrImageProcessor

NUM_CLASSES = 250
STUFF = set(range(92, NUM_CLASSES + 1))  # COCO panoptic: things have ids 1-90, stuff 92-200 (DETR pads to 250)


def workload(batch_size=2, num_queries=100, kept=100, size=(800, 1066), seed=0):
    """Model outputs whose first `kept` queries per image score ~0.9 on a random class, the rest "no object"."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch_size, num_queries, NUM_CLASSES + 1, generator=g)
    best = torch.randint(0, NUM_CLASSES, (batch_size, num_queries), generator=g)
    best[:, kept:] = NUM_CLASSES
    logits.scatter_add_(2, best[..., None], torch.full((batch_size, num_queries, 1), 8.0))
    # Each query's mask: a disc reaching a bit past halfway to the nearest other query's centre, so that queries
    # tile the image with small overlaps, as a trained model's do; plus noise.
    h, w = size[0] // 4, size[1] // 4
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    centre = torch.rand(batch_size, num_queries, 2, generator=g) * torch.tensor([h, w])
    nearest = torch.cdist(centre, centre).add_(1e9 * torch.eye(num_queries)).min(-1).values  # (B, Q)
    radius = (0.6 * nearest)[..., None, None]
    distance = ((yy - centre[..., 0, None, None]) ** 2 + (xx - centre[..., 1, None, None]) ** 2).sqrt()
    masks = 4 * (radius - distance) / radius + 0.5 * torch.randn(batch_size, num_queries, h, w, generator=g)
    return SimpleNamespace(logits=logits, pred_masks=masks), [size] * batch_size


def same_segments(ours, theirs) -> bool:
    return all(a["segments_info"] == b["segments_info"] and torch.equal(a["segmentation"], b["segmentation"])
               for a, b in zip(ours, theirs))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kept", type=int, default=100, help="queries per image above the score threshold")
    parser.add_argument("--no-kernel", action="store_true", help="detrkit without its fused CPU kernel")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.no_kernel:
        os.environ["DETRKIT_DISABLE_KERNELS"] = "1"
    path = "fused CPU kernel" if kernel_ready() else "PyTorch ops (kernel disabled or unavailable)"

    outputs, target_sizes = workload(kept=args.kept)
    calls = {
        "transformers": (TransformersDetrImageProcessor().post_process_panoptic_segmentation, STUFF),
        "detrkit": (DetrImageProcessor().post_process_panoptic_segmentation, STUFF),
    }
    results = {name: call(outputs, threshold=0.85, label_ids_to_fuse=fuse, target_sizes=target_sizes)
               for name, (call, fuse) in calls.items()}  # also the warm-up
    times = {name: [] for name in calls}
    for _ in range(args.repeats):  # alternating, so that load drifts hit both alike
        for name, (call, fuse) in calls.items():
            start = time.perf_counter()
            call(outputs, threshold=0.85, label_ids_to_fuse=fuse, target_sizes=target_sizes)
            times[name].append(time.perf_counter() - start)
    median = {name: float(np.median(t)) for name, t in times.items()}
    segments = [len(r["segments_info"]) for r in results["detrkit"]]
    print(f"workload: 2 images x 100 queries ({args.kept} kept each), masks {tuple(outputs.pred_masks.shape[-2:])}"
          f" -> 800x1066, {segments} segments; median of {args.repeats} calls, {args.threads} threads")
    print(f"detrkit path: {path}")
    # With stuff fused, transformers can give one id to two segments (see segmentation_postprocessing.py), so the
    # outputs are compared without fusing.
    unfused = [call(outputs, threshold=0.85, label_ids_to_fuse=set(), target_sizes=target_sizes)
               for call, _ in calls.values()]
    print(f"same segments as transformers (no fusing): {same_segments(unfused[1], unfused[0])}")
    print(f"transformers post_process_panoptic_segmentation: {median['transformers']:.3f} s")
    print(f"detrkit      post_process_panoptic_segmentation: {median['detrkit']:.3f} s")
    print(f"ratio: {median['transformers'] / median['detrkit']:.2f}x faster")


if __name__ == "__main__":
    main()
