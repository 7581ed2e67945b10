"""The seams of detrkit's modules, and the one way to set them.

A seam is a class attribute, None by default, that a module calls instead of a piece of its own code when it is
set on the module: the sampling of a deformable attention, for the ONNX custom node and the attention pictures;
the query projections of a deformable attention and the feed-forward block of a transformer layer, for the memory
savers. `SEAMS` names each seam and the module types that declare it (their docstrings give its signature), so a
caller targets those modules by type, never by an attribute's name.

`override_seam` sets a seam for a block and afterwards restores exactly what each module had (its own setting or
none), so blocks nest and an override already in place survives; `set_seam` / `clear_seam` set and clear it for
good (what `detrkit.training.memory_savers` does), `clear_seam` only where the given function is the one set.

Not a model file: nothing here travels with a checkpoint, and the models run without it.
"""
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from .deformable_attention import MultiScaleDeformableAttention
from .detr_transformer import TransformerLayer

SEAMS: dict[str, tuple[type[nn.Module], ...]] = {
    # (value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> (B, Q, C)
    "sampling_function": (MultiScaleDeformableAttention,),
    # (query, query_pos, sampling_offsets, attention_weights) -> (offsets, logits)
    "query_projection_function": (MultiScaleDeformableAttention,),
    # (x, fc1, activation, activation_dropout, fc2) -> the feed-forward block's output
    "feed_forward_function": (TransformerLayer,),
}

# what a module's setting was: its own value, or _UNSET where it used its class' default
_UNSET = object()


def seam_modules(model: nn.Module, seam: str) -> dict[str, nn.Module]:
    """{name: module} of the modules of `model` (itself included) that declare `seam`."""
    if seam not in SEAMS:
        raise ValueError(f"unknown seam {seam!r}; the seams are {', '.join(SEAMS)}")
    return {name: module for name, module in model.named_modules() if isinstance(module, SEAMS[seam])}


def set_seam(model: nn.Module, seam: str, function: Callable | None) -> dict[str, nn.Module]:
    """Set `seam` to `function` on every module of `model` that declares it (None: their own code); returns them."""
    modules = seam_modules(model, seam)
    for module in modules.values():
        setattr(module, seam, function)
    return modules


def clear_seam(model: nn.Module, seam: str, function: Callable | None = None) -> None:
    """Back to the modules' own code: every setting of `seam`, or only those that are `function`."""
    for module in seam_modules(model, seam).values():
        if function is None or module.__dict__.get(seam) is function:
            module.__dict__.pop(seam, None)


@contextmanager
def override_seam(model: nn.Module, seam: str, function: Callable | None = None, *,
                  function_of: Callable[[str, nn.Module, Callable | None], Callable] | None = None,
                  ) -> Iterator[dict[str, nn.Module]]:
    """Within the block, every module of `model` declaring `seam` calls `function`, or `function_of(name, module,
    previous)`, one per module, where `previous` is what it called before (None: its own code), e.g. to wrap it.
    Yields {name: module}. Afterwards each module has exactly its setting from before, whatever the block did."""
    if (function is None) == (function_of is None):
        raise ValueError("give either function or function_of")
    modules = seam_modules(model, seam)
    before = {name: module.__dict__.get(seam, _UNSET) for name, module in modules.items()}
    try:
        for name, module in modules.items():
            chosen = function if function_of is None else function_of(name, module, getattr(module, seam))
            setattr(module, seam, chosen)
        yield modules
    finally:
        for name, module in modules.items():
            if before[name] is _UNSET:
                module.__dict__.pop(seam, None)
            else:
                setattr(module, seam, before[name])


__all__ = ["SEAMS", "clear_seam", "override_seam", "seam_modules", "set_seam"]
