"""Images/s of detrkit's DetrImageProcessor against transformers' (its default torchvision backend), same run.

Workload: 8 PIL images 640x480 with 5 COCO boxes each, full preprocessing (resize to 800x1066, rescale,
normalize, pad, pixel mask, labels). Prints both rates and their ratio; the machine's noise cancels in the ratio.

    python scripts/benchmarks/benchmark_processor.py [--repeats 30] [--threads 2]
"""
import argparse
import time

import numpy as np
import torch
from PIL import Image
from transformers import DetrImageProcessor as TransformersDetrImageProcessor

from detrkit.processing import DetrImageProcessor


def workload(num_images=8, height=480, width=640, boxes_per_image=5, seed=0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(num_images)]
    annotations = []
    for image_id in range(num_images):
        xy = rng.uniform(0, [width - 100, height - 100], size=(boxes_per_image, 2))
        wh = rng.uniform(10, 100, size=(boxes_per_image, 2))
        objects = [
            {"bbox": [*map(float, p), *map(float, s)], "category_id": int(c), "area": float(s[0] * s[1]), "iscrowd": 0}
            for p, s, c in zip(xy, wh, rng.integers(1, 91, boxes_per_image))
        ]
        annotations.append({"image_id": image_id, "annotations": objects})
    return images, annotations


def seconds_per_batch(processors, images, annotations, repeats):
    """Median time of one full call for each processor, calls alternating so that load drifts hit all alike."""
    times = {name: [] for name in processors}
    for name, processor in processors.items():  # warm-up
        processor(images, annotations=annotations, return_tensors="pt")
    for _ in range(repeats):
        for name, processor in processors.items():
            start = time.perf_counter()
            processor(images, annotations=annotations, return_tensors="pt")
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images, annotations = workload()
    processors = {"transformers": TransformersDetrImageProcessor(), "detrkit": DetrImageProcessor()}
    seconds = seconds_per_batch(processors, images, annotations, args.repeats)
    ours, theirs = len(images) / seconds["detrkit"], len(images) / seconds["transformers"]
    shape = tuple(processors["detrkit"](images)["pixel_values"].shape)
    print(f"workload: {len(images)} images 640x480, 5 boxes each -> {shape}, median of {args.repeats} calls each")
    print(f"transformers DetrImageProcessor ({processors['transformers'].backend}): {theirs:7.1f} images/s")
    print(f"detrkit DetrImageProcessor:                 {ours:7.1f} images/s")
    print(f"ratio detrkit / transformers: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
