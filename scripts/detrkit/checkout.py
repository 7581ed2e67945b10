"""The source checkout detrkit runs from, when it runs from one (an editable install or the repository root): the
demo's checkpoint and configs live there, and a wheel can be built from it."""

from functools import cache
from pathlib import Path


@cache
def checkout_root() -> Path | None:
    """The repository folder above this file, or None when detrkit is installed from a wheel."""
    for folder in Path(__file__).resolve().parents:
        if (folder / "setup.py").is_file() and (folder / "scripts" / "detrkit").is_dir():
            return folder
    return None
