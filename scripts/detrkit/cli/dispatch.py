"""The `detrkit` command line: `detrkit COMMAND [ARGS]`, each command a module with `main(argv) -> int | None`.

Commands are imported only when called, so `detrkit --help` stays fast and one command's optional
dependencies (onnx, gradio, ...) never burden another.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {  # name -> (module, one-line summary)
    "train": ("detrkit.training.train", "train or fine-tune a detector"),
    "evaluate": ("detrkit.inference.evaluate_command", "COCO evaluation of a model on a data set"),
    "predict": ("detrkit.inference.predict_command", "detect objects in images, folders, globs, URLs or videos"),
    "data": ("detrkit.data.check", "summarise and check a data set (detrkit data check PATH)"),
    "convert": ("detrkit.conversion.convert_command", "convert an official DETR / Deformable DETR .pth checkpoint"),
    "export": ("detrkit.deploy.export_command", "export a model to ONNX"),
    "visualize": ("detrkit.deploy.visualize_command", "draw what a model attends to"),
    "demo": ("detrkit.deploy.demo_command", "start the Gradio web demo"),
    "space": ("detrkit.deploy.space", "write a Hugging Face Space (app.py + requirements) for a model"),
    "refresh-code": ("detrkit.deploy.refresh_code",
                     "rewrite a save_pretrained folder's remote-code files from this detrkit (--check: report)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return ("usage: detrkit COMMAND [ARGS]   (detrkit COMMAND --help for its options)\n"
            "       detrkit --version\n\ncommands:\n" + "\n".join(lines)
            + "\n\nEvery command: --debug shows the traceback of an error.")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("detrkit")
    except PackageNotFoundError:  # run from a checkout without installing it
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"detrkit {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"detrkit: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
