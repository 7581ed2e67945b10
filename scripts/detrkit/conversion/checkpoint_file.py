"""Reading an official checkpoint: a local path or a URL, loaded with `torch.load(weights_only=True)` only.

The official training scripts (facebookresearch/detr and fundamentalvision/Deformable-DETR `main.py`) save
`{"model": state_dict, "args": argparse.Namespace, "optimizer": ..., "lr_scheduler": ..., "epoch": ...}`; the
released DETR files keep only `"model"`. The Namespace is the one non-tensor class allowed through the unpickler.
"""

import argparse
import os
import tempfile
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

EXPECTED = ("an official DETR / Deformable DETR checkpoint (facebookresearch/detr or fundamentalvision/"
            "Deformable-DETR main.py): a dict with 'model', a state dict whose keys start with 'backbone.0.body.', "
            "'transformer.', 'class_embed', 'bbox_embed' (or 'detr.' for panoptic files), and optionally 'args'")


class CheckpointError(ValueError):
    """The file is not an official checkpoint, or it cannot be converted as asked."""


@dataclass
class OfficialCheckpoint:
    state_dict: dict[str, torch.Tensor]
    args: argparse.Namespace | None
    file_name: str  # the file's base name, kept as evidence (DETR's official names say "dc5")


@contextmanager
def local_file(source: str):
    """Yield a local path for `source`: the path itself, or a temporary download of an http(s)/ftp URL."""
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https", "ftp"):
        name = Path(urllib.parse.urlparse(source).path).name or "checkpoint.pth"
        with tempfile.TemporaryDirectory() as folder:
            target = os.path.join(folder, name)
            try:
                torch.hub.download_url_to_file(source, target, progress=False)
            except OSError as error:  # urllib's URLError/HTTPError are OSErrors
                raise CheckpointError(f"could not download {source}: {error}") from error
            yield target
        return
    if not os.path.isfile(source):
        raise CheckpointError(f"{source}: no such file (expected a path or an http(s) URL of a .pth file)")
    yield source


def _safe_load(path: str):
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises UnpicklingError, RuntimeError or zip errors
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); expected {EXPECTED}"
        ) from error


def _looks_official(state_dict) -> bool:
    return (isinstance(state_dict, dict) and state_dict
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state_dict.items())
            and any(k.startswith(("transformer.", "detr.transformer.")) for k in state_dict)
            and any(k.startswith(("backbone.0.body.", "detr.backbone.0.body.")) for k in state_dict))


def load_official_checkpoint(source: str) -> OfficialCheckpoint:
    """Load `source` (path or URL) and check it has the official layout; a bare state dict is accepted too."""
    with local_file(source) as path:
        content = _safe_load(path)
    state_dict = content.get("model") if isinstance(content, dict) and "model" in content else content
    if not _looks_official(state_dict):
        found = sorted(content)[:8] if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(f"{source}: not an official checkpoint (found {found}); expected {EXPECTED}")
    args = content.get("args") if isinstance(content, dict) else None
    if args is not None and not isinstance(args, argparse.Namespace):
        raise CheckpointError(f"{source}: 'args' is a {type(args).__name__}, expected the argparse.Namespace "
                              "that the official main.py saves")
    name = Path(urllib.parse.urlparse(source).path).name
    return OfficialCheckpoint(dict(state_dict), args, name)
