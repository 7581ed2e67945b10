"""Shared fixtures for the DETR model and Hub tests: tiny configs (2-core CI) and random-weight checkpoints
written by transformers' own DETR classes."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

# A preamble that makes detrkit unimportable in a child process (its editable-install finder and path hooks), so a
# Hub load there proves that plain transformers + trust_remote_code suffice.
_HIDE_DETRKIT = """
import sys
def _editable(obj):
    return "__editable__" in (getattr(obj, "__module__", None) or type(obj).__module__)
sys.meta_path[:] = [f for f in sys.meta_path if not _editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not _editable(h)]
sys.path_importer_cache.clear()
try:
    import detrkit
except ImportError:
    pass
else:
    raise SystemExit("detrkit is importable, the test would prove nothing: " + str(detrkit.__path__))
"""


def run_without_detrkit(script: str, *args, cwd, hf_home=None) -> subprocess.CompletedProcess:
    """Run `script` (Python source; sys.argv[1:] = args) in a fresh, offline interpreter where detrkit is hidden,
    with the Hub cache (where remote code is copied) in `hf_home` (default: cwd/hf)."""
    env = {**os.environ, "HF_HOME": str(Path(hf_home or Path(cwd) / "hf")), "HF_HUB_OFFLINE": "1",
           "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", _HIDE_DETRKIT + textwrap.dedent(script), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

# resnet18, d_model 32, one encoder and two decoder layers: small enough for CI, deep enough for auxiliary losses
SMALL = dict(
    backbone="resnet18",
    d_model=32,
    encoder_layers=1,
    decoder_layers=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    num_queries=8,
    num_labels=4,
)


@pytest.fixture
def small_kwargs():
    return dict(SMALL)


def padded_batch(sizes=((64, 96), (80, 72)), seed=0):
    """Two differently sized random images padded bottom-right, with transformers' pixel_mask (1 = real)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    pixel_values = torch.zeros(len(sizes), 3, height, width)
    pixel_mask = torch.zeros(len(sizes), height, width, dtype=torch.long)
    for i, (h, w) in enumerate(sizes):
        pixel_values[i, :, :h, :w] = torch.randn(3, h, w, generator=generator)
        pixel_mask[i, :h, :w] = 1
    return pixel_values, pixel_mask


def random_labels(batch_size, num_labels, seed=0, counts=None):
    """transformers-style targets: normalized cxcywh boxes inside the image, the second image with no objects
    when `counts` says so."""
    generator = torch.Generator().manual_seed(seed)
    counts = counts or [3] * batch_size
    labels = []
    for n in counts:
        centers = torch.rand(n, 2, generator=generator) * 0.5 + 0.25
        sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.1
        classes = torch.randint(0, num_labels, (n,), generator=generator)
        labels.append({"class_labels": classes, "boxes": torch.cat([centers, sizes], -1)})
    return labels
