"""What a local `save_pretrained` folder holds, checked before transformers reads it, so that a missing or
broken file is one detrkit line naming the file (transformers would raise a SafetensorError traceback, or talk
about huggingface.co for a folder that is right here).
"""
from __future__ import annotations

import sys
from pathlib import Path

WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
PROCESSOR_FILE = "preprocessor_config.json"


def check_weights_file(folder: Path, name: str) -> None:
    """Raise (OSError / ValueError, one line) if `folder` has no weights file or its model.safetensors is
    truncated or corrupt; `name` is how the user named the model."""
    present = [f for f in WEIGHTS_FILES if (folder / f).is_file()]
    if not present:
        raise OSError(f"{name}: no weights file inside (expected {WEIGHTS_FILES[0]}); not a complete "
                      "save_pretrained folder")
    if present[0] == "model.safetensors":
        check_safetensors(folder / "model.safetensors")
    elif present[0] == "model.safetensors.index.json":
        for shard in sorted(set(read_weights_index(folder / present[0], name).get("weight_map", {}).values())):
            if not (folder / shard).is_file():
                raise OSError(f"{folder / shard}: missing (listed in {present[0]})")
            check_safetensors(folder / shard)


def read_weights_index(path: Path, name: str) -> dict:
    """model.safetensors.index.json, or one line saying it is not valid JSON."""
    import json

    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{name}: {path.name} is not valid JSON ({error})") from None


def check_safetensors(path: Path) -> None:
    """Read the file's header: safetensors verifies that it parses and that the tensors cover the whole file,
    which is what a truncated download or an interrupted save breaks."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except SafetensorError as error:
        raise ValueError(f"{path}: truncated or corrupt weights file ({' '.join(str(error).split())}); "
                         "save or download it again") from None


def has_processor(folder: Path) -> bool:
    return (folder / PROCESSOR_FILE).is_file()


def default_processor(family, name: str, log=None):
    """The family's processor with its defaults (what transformers' fine-tuning guides build), announced."""
    processor = family.processor_class()
    message = (f"warning: {name} has no {PROCESSOR_FILE}; using the default {type(processor).__name__} "
               f"(shortest edge {processor.size.get('shortest_edge')}, ImageNet normalisation)")
    (log or (lambda text: print(text, file=sys.stderr)))(message)
    return processor
