"""`detrkit visualize MODEL IMAGE`: the command's options; the drawing itself is visualize.py.

Kept apart so that `detrkit visualize --help` answers without importing torch.
"""
from __future__ import annotations

import argparse

from detrkit.cli.options import add_trust_remote_code
from detrkit.cli.runner import run_command


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detrkit visualize", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Draw what a detector attends to: DETR's decoder cross-attention and encoder self-attention, "
                    "Deformable DETR's sampling points (see detrkit/deploy/visualize.py).",
        epilog="Add --debug to see a traceback on errors.")
    parser.add_argument("model", help="save_pretrained folder, Hub id or preset name")
    parser.add_argument("image", help="an image file")
    parser.add_argument("--output", default="attention.png", help="the PNG file to write (default: attention.png)")
    parser.add_argument("--threshold", type=float, default=0.5, help="score of the detections drawn (default: 0.5)")
    parser.add_argument("--max-detections", type=int, default=4, help="detections drawn, best first (default: 4)")
    parser.add_argument("--pixel", type=float, nargs=2, action="append", metavar=("X", "Y"),
                        help="encoder query pixel in the processed input (repeatable; default: detection centres)")
    add_trust_remote_code(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """User errors (missing files, bad models) end as one line on stderr and exit status 2."""
    return run_command("visualize", argv, lambda args: visualize(argument_parser().parse_args(args)))


def visualize(args) -> int:
    from detrkit.data.images import open_image
    from detrkit.inference.loading import load_for_inference

    from .visualize import attention_maps, draw

    image = open_image(args.image).convert("RGB")  # before the model: a wrong path fails at once
    model, processor = load_for_inference(args.model, trust_remote_code=args.trust_remote_code)
    maps = attention_maps(model, processor, image, args.threshold, args.pixel)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    figure = draw(image, maps, id2label, args.max_detections)
    figure.savefig(args.output, dpi=80)
    print(f"{len(maps['detections']['scores'])} detection(s); wrote {args.output}")
    return 0
