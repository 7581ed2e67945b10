"""`detrkit demo MODEL`: the command's options; the Gradio page itself is demo.py.

Kept apart so that `detrkit demo --help` answers without importing torch or gradio.
"""
from __future__ import annotations

import argparse
import os

from detrkit.cli.options import add_device, add_trust_remote_code
from detrkit.cli.runner import run_command


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detrkit demo", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A Gradio page to try a detector on your own images: detections above a score slider, and "
                    "what each one attends to (see detrkit/deploy/demo.py).",
        epilog="Add --debug to see a traceback on errors.")
    parser.add_argument("model", help="save_pretrained folder, Hub id or preset name")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to serve on; 0.0.0.0 for every interface (default: $GRADIO_SERVER_NAME, "
                             "else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to serve on (default: $GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--example", action="append", default=[],
                        help="example image (repeatable; default: a bundled one)")
    parser.add_argument("--title", default=None, help="page title (default: detrkit: <model folder name>)")
    add_device(parser, default="cpu")  # one image at a time: the CPU serves it, as the Space's free hardware does
    add_trust_remote_code(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """User errors (missing files, bad models) end as one line on stderr and exit status 2."""
    return run_command("demo", argv, lambda args: demo(argument_parser().parse_args(args)))


def demo(args) -> int:
    import tempfile
    from pathlib import Path

    from detrkit.cli.device_option import resolve_device
    from detrkit.inference.loading import load_for_inference

    from .demo import build_app, example_image

    model, processor = load_for_inference(args.model, resolve_device(args.device),
                                          trust_remote_code=args.trust_remote_code)
    examples = args.example or [example_image(tempfile.mkdtemp(prefix="detrkit-demo-"))]
    app = build_app(model, processor, examples, args.title or f"detrkit: {Path(args.model).name}")
    app.launch(server_name=args.host, server_port=args.port)
    return 0
