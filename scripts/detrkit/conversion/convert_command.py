"""`detrkit convert SOURCE OUTPUT_DIR [--dc5 | --no-dc5]`: an official DETR / Deformable DETR .pth (path or URL)
-> a save_pretrained folder that detrkit and plain transformers (trust_remote_code) load."""

import argparse
import sys

from detrkit.cli.runner import run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detrkit convert", description=__doc__)
    parser.add_argument("source", help="path or http(s) URL of the official .pth checkpoint")
    parser.add_argument("output_dir", help="folder to write (weights, config, processor, model card)")
    dc5 = parser.add_mutually_exclusive_group()
    dc5.add_argument("--dc5", dest="dilation", action="store_true", default=None,
                     help="the backbone's last stage is dilated (DC5); DETR's weights do not show it (default: "
                          "the checkpoint's args.dilation, else the official file name, else an error)")
    dc5.add_argument("--no-dc5", dest="dilation", action="store_false",
                     help="the backbone is not dilated (default: as for --dc5)")
    return parser


def main(argv=None) -> int:
    """A bad checkpoint (CheckpointError, a ValueError) ends as one line and exit status 2; --debug: traceback."""
    return run_command("convert", argv, lambda args: convert(build_parser().parse_args(args)))


def convert(args) -> int:
    from .convert import convert_official_checkpoint  # imports torch/transformers: after --help

    model = convert_official_checkpoint(args.source, args.output_dir, dilation=args.dilation)
    config = model.config
    print(f"wrote {args.output_dir}: {type(model).__name__}, {config.backbone} (DC5: {config.dilation}), "
          f"{config.encoder_layers}+{config.decoder_layers} layers, {config.num_queries} queries, "
          f"{config.num_labels} labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
