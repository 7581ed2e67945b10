"""Parameters, GFLOPs and CPU forward time of the zoo's architectures (and the ResNeXt-101-DCN preset), random
weights, one 800x1333 image: `python -m detrkit.conversion.measure [PRESET ...] [--time]`.

FLOPs are counted by `torch.utils.flop_counter` over one forward pass and reported as multiply-accumulates
(GMACs), the unit the DETR and Deformable DETR papers call FLOPs (fvcore / detectron2 counting). Operators it
has no formula for are not counted: the bilinear sampling of deformable attention and of deformable
convolution (their projections and the convolutions around them are).
"""

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from detrkit import modeling

from .zoo import ZOO

DCN_PRESET = "deformable-detr-resnext101-dcn"


def measure(preset: str, height: int = 800, width: int = 1333, timed: bool = False) -> dict:
    config = modeling.config_from_preset(preset)
    model_class = (modeling.DeformableDetrForObjectDetection if isinstance(config, modeling.DeformableDetrConfig)
                   else modeling.DetrForObjectDetection)
    torch.manual_seed(0)
    # no parameter asks for gradients: the counter's module tracker hooks autograd for tensors that do
    model = model_class(config).eval().requires_grad_(False)
    pixel_values = torch.randn(1, 3, height, width)
    counter = FlopCounterMode(display=False)
    with counter:
        model(pixel_values)
    result = {"preset": preset, "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
              "GMACs": round(counter.get_total_flops() / 2e9, 1), "input": f"1x3x{height}x{width}"}
    if timed:
        with torch.no_grad():
            model(pixel_values)  # warm-up: kernels, allocator
            start = time.perf_counter()
            model(pixel_values)
            result["forward_s"] = round(time.perf_counter() - start, 2)
            result["threads"] = torch.get_num_threads()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detrkit.conversion.measure", description=__doc__)
    parser.add_argument("presets", nargs="*", help="presets to measure (default: every zoo preset and the DCN one)")
    parser.add_argument("--time", action="store_true", help="also time one forward pass (after one warm-up)")
    args = parser.parse_args(argv)
    presets = args.presets or [e.preset for e in ZOO if e.preset] + [DCN_PRESET]
    for preset in presets:
        print(json.dumps(measure(preset, timed=args.time)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
