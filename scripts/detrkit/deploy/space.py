"""`detrkit space MODEL OUT_DIR`: a Hugging Face Space folder (Gradio SDK) that serves `detrkit demo` for MODEL.

Writes `app.py` (calls the demo's `main`, on the host and port the Space gives), `requirements.txt`, a README
with the Space's front matter, and the model: a local save_pretrained folder is copied into `model/`, any other
MODEL (a Hub id) is named in app.py and downloaded by the Space. detrkit itself travels as a wheel built from this
checkout (requirements.txt points at it), or as a requirement you give with `--detrkit-requirement`.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from ..checkout import checkout_root

APP = '''"""Hugging Face Space: the detrkit demo (written by `detrkit space`)."""
import os

from detrkit.deploy.demo_command import main

if __name__ == "__main__":
    os.environ.setdefault("GRADIO_SERVER_NAME", "0.0.0.0")
    main([{model!r}, "--title", {title!r}])
'''

README = """---
title: {title}
sdk: gradio
app_file: app.py
pinned: false
---

{title}: upload an image, see the detections and what each one attends to. Made with `detrkit space`.
"""

REQUIREMENTS = ["gradio>=5", "matplotlib", "onnx", "onnxruntime"]


def build_wheel(out_dir: Path) -> str:
    """Build detrkit's wheel into `out_dir`; returns the requirement line for it."""
    root = checkout_root()
    if root is None:
        raise RuntimeError("detrkit is not installed from a checkout: pass --detrkit-requirement (e.g. a git URL)")
    before = set(out_dir.glob("detrkit-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(out_dir), str(root)], check=True)
    wheels = sorted(set(out_dir.glob("detrkit-*.whl")) - before) or sorted(out_dir.glob("detrkit-*.whl"))
    return f"./{wheels[-1].name}"


def write_space(model: str, out_dir: str | Path, detrkit_requirement: str | None = None,
                title: str | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    local = Path(model)
    if local.is_dir():
        if not (local / "config.json").exists():
            raise FileNotFoundError(f"{model}: not a save_pretrained folder (no config.json)")
        shutil.copytree(local, out_dir / "model", dirs_exist_ok=True)
        model_ref = "model"
    else:
        model_ref = model  # a Hub id or a preset name
    title = title or f"detrkit {local.name if local.is_dir() else model}"
    (out_dir / "app.py").write_text(APP.format(model=model_ref, title=title))
    (out_dir / "README.md").write_text(README.format(title=title))
    requirement = detrkit_requirement or build_wheel(out_dir)
    (out_dir / "requirements.txt").write_text("\n".join([requirement, *REQUIREMENTS]) + "\n")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """User errors (missing files, bad models) end as one line on stderr and exit status 2."""
    from detrkit.cli.runner import run_command

    return run_command("space", argv, command)


def command(argv: list[str]) -> int:
    args = argument_parser().parse_args(argv)
    out = write_space(args.model, args.out_dir, args.detrkit_requirement, args.title)
    print(f"wrote the Space to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detrkit space", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="save_pretrained folder (copied) or Hub id (named)")
    parser.add_argument("out_dir", help="the Space folder to write")
    parser.add_argument("--detrkit-requirement", default=None,
                        help="requirements.txt line for detrkit (default: a wheel built from this checkout)")
    parser.add_argument("--title", default=None, help="the Space's title (default: detrkit <model name>)")
    return parser
