"""`detrkit export MODEL --output FILE.onnx`: the command's options; the exporter itself is export.py.

Kept apart so that `detrkit export --help` answers without importing torch.
"""
from __future__ import annotations

import argparse

from detrkit.cli.options import add_bool, add_device, add_trust_remote_code
from detrkit.cli.runner import run_command

MIN_OPSET = 16  # export.MIN_OPSET, repeated so that --help needs no torch (test_cli_help checks they agree)
MSDA_OPS = ("grid_sample", "detrkit")  # export.MSDA_OPS, likewise


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detrkit export", description=_description(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Add --debug to see a traceback on errors.")
    parser.add_argument("model", help="save_pretrained folder, Hub id or preset name (random weights)")
    parser.add_argument("--output", required=True, help="the .onnx file to write (required)")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="file format (default: onnx, the only one)")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset, at least {MIN_OPSET} (default: 17)")
    graph = parser.add_argument_group("graph")
    add_bool(graph, "--pixel-mask", False, "take a pixel_mask input (padded batches)")
    add_bool(graph, "--postprocess", False, "take target_sizes and also return scores, labels and boxes in pixels")
    graph.add_argument("--top-k", type=int, default=100,
                       help="with --postprocess, Deformable DETR: (query, class) pairs kept per image (default: 100)")
    graph.add_argument("--example-size", type=int, nargs=2, default=(256, 320), metavar=("HEIGHT", "WIDTH"),
                       help="the input size traced; any size runs (default: 256 320)")
    graph.add_argument("--msda-op", default="grid_sample", choices=MSDA_OPS,
                       help="Deformable DETR's deformable attention as standard ONNX ops (grid_sample: any runtime) "
                            "or one custom node per layer run by detrkit's C++ kernel (detrkit: faster in "
                            "onnxruntime, but the file then needs Python with detrkit and onnxruntime-extensions; "
                            "load it with detrkit.deploy.onnx_session) (default: grid_sample)")
    loading = parser.add_argument_group("model loading")
    add_device(loading, default="cpu")  # the traced file is the same; tracing needs no GPU
    add_trust_remote_code(loading)
    return parser


def _description() -> str:
    return "Export a detector to ONNX (the graph's inputs and outputs: see detrkit/deploy/export.py)."


def main(argv: list[str] | None = None) -> int:
    """User errors (missing files, bad models) end as one line on stderr and exit status 2."""
    return run_command("export", argv, lambda args: export(argument_parser().parse_args(args)))


def export(args) -> int:
    from detrkit.cli.device_option import resolve_device
    from detrkit.inference.loading import load_for_inference

    from .export import export_onnx

    device = resolve_device(args.device)
    model, _ = load_for_inference(args.model, device, trust_remote_code=args.trust_remote_code)
    path = export_onnx(model, args.output, args.opset, args.pixel_mask, args.postprocess, args.top_k,
                       tuple(args.example_size), msda_op=args.msda_op)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB), onnx.checker passed")
    return 0
