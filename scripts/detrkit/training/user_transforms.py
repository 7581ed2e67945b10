"""`--transforms`: the user's own training transforms, run before DETR's (flip, multi-scale resize, crop).

The spec names a torchvision.transforms.v2 transform, or a function returning one, as `package.module:name` or
`path/to/file.py:name`. It receives the same sample as DETR's pipeline, `{"image": tv_tensors.Image, "boxes":
tv_tensors.BoundingBoxes, "annotation_index": tensor}`, so box-aware v2 transforms keep boxes and labels in step;
boxes it pushes out of the image are dropped by the pipeline's sanitizing step after it. It must be picklable
(defined at module level) when DataLoader workers are used.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from torchvision.transforms import v2


def load_user_transforms(spec: str):
    """The object `spec` names; a class or function is called once without arguments."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise ValueError(f"--transforms {spec!r}: expected 'module:name' or 'file.py:name'")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--transforms {spec!r}: no such file {path}")
        module_spec = importlib.util.spec_from_file_location(f"detrkit_user_transforms_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if not hasattr(module, name):
        raise ValueError(f"--transforms {spec!r}: {target} has no {name!r}")
    found = getattr(module, name)
    transform = found() if isinstance(found, type) or (callable(found) and not isinstance(found, v2.Transform)
                                                        and getattr(found, "__code__", None) is not None
                                                        and found.__code__.co_argcount == 0) else found
    if not callable(transform):
        raise ValueError(f"--transforms {spec!r}: {name} is not a transform (not callable)")
    return transform


def with_user_transforms(pipeline, spec: str | None):
    """`pipeline` preceded by the user's transforms (unchanged without a spec)."""
    if not spec:
        return pipeline
    return v2.Compose([load_user_transforms(spec), pipeline])
