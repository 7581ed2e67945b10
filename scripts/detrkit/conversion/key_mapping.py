"""Renaming an official state dict into detrkit's (= transformers') layout, accounting for every key.

Rules are (regex, replacement) pairs tried in order on each official key; the first match renames it. The one
structural change is nn.MultiheadAttention's packed `in_proj_weight` / `in_proj_bias` (query, key and value
stacked along dim 0), which become `q_proj`, `k_proj`, `v_proj`. A key no rule matches is an error, so nothing
in the file is silently dropped; the caller checks that the result holds exactly the model's keys.
"""

import re

import torch

from .checkpoint_file import CheckpointError


def layer_rules(official_prefix: str, detrkit_prefix: str, sub_modules: dict[str, str]) -> list[tuple[str, str]]:
    """Rules for `official_prefix.layers.N.<sub>.*` -> `detrkit_prefix.layers.N.<sub_modules[sub]>.*`."""
    return [(rf"^{re.escape(official_prefix)}\.layers\.(\d+)\.{re.escape(old)}\.(.+)$",
             rf"{detrkit_prefix}.layers.\1.{new}.\2") for old, new in sub_modules.items()]


def _split_packed_projection(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """`x.in_proj_weight` (3D, D) -> x.q_proj.weight, x.k_proj.weight, x.v_proj.weight (and biases)."""
    prefix, kind = name.rsplit(".in_proj_", 1)
    if tensor.shape[0] % 3:
        raise CheckpointError(f"{name} has {tensor.shape[0]} rows, not three stacked projections")
    query, key, value = tensor.chunk(3, dim=0)
    return {f"{prefix}.q_proj.{kind}": query, f"{prefix}.k_proj.{kind}": key, f"{prefix}.v_proj.{kind}": value}


def rename_state_dict(state_dict: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Apply `rules` to every key; unmatched keys and two keys landing on one name are errors."""
    renamed: dict[str, torch.Tensor] = {}
    unmatched = []
    for old, tensor in state_dict.items():
        for pattern, replacement in rules:
            if re.match(pattern, old):
                new = re.sub(pattern, replacement, old)
                break
        else:
            unmatched.append(old)
            continue
        pieces = _split_packed_projection(new, tensor) if ".in_proj_" in new else {new: tensor}
        for name, value in pieces.items():
            if name in renamed:
                raise CheckpointError(f"two official keys map to {name} (the second is {old})")
            renamed[name] = value.clone()
    if unmatched:
        raise CheckpointError(f"{len(unmatched)} keys of the checkpoint have no place in the converted model, e.g. "
                              f"{unmatched[:5]}; is it an official checkpoint of a supported variant?")
    return renamed


def check_complete(renamed: dict[str, torch.Tensor], model: torch.nn.Module):
    """Every key of `model` comes from the file (none left to random initialisation), with matching shapes."""
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(renamed)), sorted(set(renamed) - set(expected))
    if missing or extra:
        raise CheckpointError(f"the converted weights do not match the built architecture: missing {missing[:5]} "
                              f"({len(missing)}), unexpected {extra[:5]} ({len(extra)})")
    wrong = [(k, tuple(renamed[k].shape), tuple(v.shape)) for k, v in expected.items() if renamed[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"shape mismatches (file, model): {wrong[:5]}")


def check_tied_copies(state_dict: dict[str, torch.Tensor], pairs: list[tuple[str, str]]):
    """The official models register some heads twice (the decoder's box-refinement heads are the model's); the
    file then holds both copies, which must agree for the single detrkit module to stand for both."""
    for copy, original in pairs:
        if not torch.equal(state_dict[copy], state_dict[original]):
            raise CheckpointError(f"{copy} differs from {original}; the official code ties them (one module)")
