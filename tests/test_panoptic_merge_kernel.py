"""The fused panoptic merge kernel (detrkit.kernels.panoptic_merge) against what it replaces: F.interpolate's
values bit for bit, the PyTorch merge in processing/segmentation_postprocessing.py (winner, both areas) on random
and tie-heavy inputs, and transformers' post-processing end to end.

The first test builds the kernel (about 15 s on 2 cores, cached afterwards) and fails if it cannot."""
import os
import platform
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from detrkit.kernels import build
from detrkit.kernels.panoptic_merge import fused_multiply_add_mode, interpolate_is_separable, panoptic_merge
from detrkit.processing.segmentation_postprocessing import (
    SegmentationPostProcessingError, merge_queries, post_process_panoptic_segmentation,
)


def kernel_ops():
    status = build.load_kernel("panoptic_cpu")
    assert status.loaded, status.error
    return torch.ops.detrkit_panoptic_cpu


def test_kernel_builds_and_matches_this_torch():
    kernel_ops()
    assert fused_multiply_add_mode() is not None, "neither rounding mode reproduces F.interpolate on the probe"


UPSAMPLE_CASES = [  # (K, h, w) -> (H, W): odd sizes, 4x like DETR's masks, downsampling, one dimension unchanged
    (7, 23, 31, 101, 97), (2, 50, 67, 200, 268), (4, 41, 29, 130, 7), (5, 120, 90, 70, 61), (1, 9, 200, 9, 333),
    (4, 60, 3, 240, 1),
]


@pytest.mark.parametrize("case", UPSAMPLE_CASES, ids=str)
def test_upsample_is_bit_equal_to_interpolate(case):
    """The debug entry point returns the kernel's upsampled maps (same taps, passes and rounding as merge)."""
    num_queries, h, w, height, width = case
    assert interpolate_is_separable(num_queries, (height, width))
    probs = torch.rand(num_queries, h, w, generator=torch.Generator().manual_seed(sum(case)))
    expected = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    fma = fused_multiply_add_mode()
    got = kernel_ops().upsample_bilinear(probs, height, width, fma)
    assert torch.equal(got, expected), f"{(got != expected).sum()} of {got.numel()} values differ"
    # The other rounding mode differs (else the test above could not tell them apart).
    other = kernel_ops().upsample_bilinear(probs, height, width, not fma)
    assert not torch.equal(other, expected)


def make_queries(seed, num_queries, mask_size, ties=False):
    """Sigmoid mask probabilities and scores; with `ties`, saturated masks (many exact 1.0 and 0.0) and equal
    scores, so that many pixels have several queries at exactly the same weighted value."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_queries, *mask_size, generator=g) * (40 if ties else 2)
    scores = torch.rand(num_queries, generator=g) * 0.5 + 0.5
    if ties:
        scores = torch.full((num_queries,), 0.75)
        scores[::3] = 1.0
    return logits.sigmoid(), scores


MERGE_CASES = {
    "DETR-like 4x, odd target": (12, (50, 67), (201, 267)),
    "non-multiple of 4": (9, (37, 41), (151, 163)),
    "target smaller than mask": (6, (120, 90), (70, 61)),
    "one query": (1, (40, 30), (161, 121)),
    "no resize": (8, (70, 80), None),
    "resize to own size": (5, (70, 80), (70, 80)),
    "one row": (4, (16, 16), (1, 300)),
}


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("case", MERGE_CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_merge_equals_pytorch_path(case, ties, threads):
    num_queries, mask_size, target_size = MERGE_CASES[case]
    probs, scores = make_queries(len(case), num_queries, mask_size, ties)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        merged = panoptic_merge(probs, scores, target_size, 0.5)
    finally:
        torch.set_num_threads(saved)
    assert merged is not None, "the kernel was not used"
    winner, won_area, own_area = merged
    expected_winner, expected_won, expected_own = merge_queries(probs.clone(), scores, 0.5, target_size)
    assert torch.equal(winner.long(), expected_winner)
    assert torch.equal(won_area, expected_won) and torch.equal(own_area, expected_own)
    if ties and num_queries >= 6:  # the case is what it claims: many pixels where several queries share the best
        weighted = probs * scores[:, None, None]
        best = weighted.max(0).values
        assert ((weighted == best).sum(0) > 1).float().mean() > 0.2


def test_threshold_compares_in_float32_like_torch():
    """torch compares a float32 tensor with a Python float in float32: float32(0.7) >= 0.7 holds, although the
    double 0.7 is larger."""
    probs = torch.full((2, 10, 10), 0.7)
    probs[1] = 0.3
    _, _, own_area = panoptic_merge(probs, torch.ones(2), None, 0.7)
    _, _, expected = merge_queries(probs.clone(), torch.ones(2), 0.7, None)
    assert own_area.tolist() == expected.tolist() == [100, 0]


def test_falls_back_where_it_cannot_match():
    probs, scores = make_queries(0, 4, (20, 30))
    assert panoptic_merge(probs, scores, (40, 50), 0.5) is None  # F.interpolate's channels-last kernel here
    assert panoptic_merge(probs.double(), scores.double(), (100, 120), 0.5) is None
    assert panoptic_merge(probs, scores, (100, 120), 0.5) is not None


def test_kernels_disabled_falls_back(monkeypatch):
    monkeypatch.setenv("DETRKIT_DISABLE_KERNELS", "1")
    probs, scores = make_queries(0, 4, (20, 30))
    assert panoptic_merge(probs, scores, (100, 120), 0.5) is None


def test_nan_is_an_error_on_both_paths():
    probs, scores = make_queries(0, 3, (20, 30))
    probs[1, 5, 7] = float("nan")
    outputs = SimpleNamespace(logits=torch.full((1, 3, 3), -9.0), pred_masks=torch.logit(probs)[None])
    outputs.logits[0, :, 0] = 9.0
    for size in [(100, 120), (40, 50)]:  # kernel, then the PyTorch path
        with pytest.raises(SegmentationPostProcessingError, match="NaN"):
            post_process_panoptic_segmentation(outputs, target_sizes=[size])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"mask_probs \(K, h, w\) and scores \(K,\)"):
        panoptic_merge(torch.rand(3, 4, 5), torch.rand(2), (100, 100), 0.5)
    with pytest.raises(RuntimeError, match="target size must be positive"):
        kernel_ops().merge(torch.rand(3, 4, 5), torch.rand(3), 0, 100, 0.5, True)


def test_post_processing_equals_transformers_with_the_kernel():
    """End to end at a size where the kernel runs: transformers' DetrImageProcessor gives the same maps."""
    from transformers import DetrImageProcessor

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 30, 8, generator=g)
    logits[..., 0] += 4
    # A disc per query around a random centre, plus noise: segments that survive the overlap test.
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(52.0), indexing="ij")
    centre = torch.rand(2, 30, 2, 1, 1, generator=g) * torch.tensor([40.0, 52.0]).view(2, 1, 1)
    distance = ((yy - centre[:, :, 0]) ** 2 + (xx - centre[:, :, 1]) ** 2).sqrt()
    masks = 3 * (8 - distance) / 8 + 0.5 * torch.randn(2, 30, 40, 52, generator=g)
    outputs = SimpleNamespace(logits=logits, pred_masks=masks)
    sizes = [(157, 203), (160, 209)]
    kwargs = dict(threshold=0.3, mask_threshold=0.5, overlap_mask_area_threshold=0.3, target_sizes=sizes)
    assert panoptic_merge(masks[0].sigmoid(), torch.rand(30), sizes[0], 0.5) is not None
    ours = post_process_panoptic_segmentation(outputs, **kwargs)
    theirs = DetrImageProcessor().post_process_panoptic_segmentation(outputs, **kwargs)
    assert any(len(r["segments_info"]) > 3 for r in ours)
    for a, b in zip(ours, theirs):
        assert a["segments_info"] == b["segments_info"]
        assert torch.equal(a["segmentation"], b["segmentation"].to(a["segmentation"].dtype))


CHECK_MERGE = (
    "import torch\n"
    "from detrkit.kernels.panoptic_merge import fused_multiply_add_mode, panoptic_merge\n"
    "from detrkit.processing.segmentation_postprocessing import merge_queries\n"
    "probs, scores = torch.rand(6, 50, 67), torch.rand(6)\n"
    "for size in [(201, 267), (203, 250), (70, 61)]:\n"
    "    got = panoptic_merge(probs, scores, size, 0.5)\n"
    "    expected = merge_queries(probs.clone(), scores, 0.5, size)\n"
    "    assert all(torch.equal(a.long(), b) for a, b in zip(got, expected)), size\n"
    "print(fused_multiply_add_mode())\n"
)


def run_check(**env) -> str:
    result = subprocess.run([sys.executable, "-c", CHECK_MERGE], env=dict(os.environ, **env), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="ATEN_CPU_CAPABILITY values are x86's")
@pytest.mark.slow
def test_rounding_follows_atens_cpu_capability():
    """Without AVX2, ATen's upsampling has no fused multiply-adds: the probe must find that, and the merge (its
    non-FMA code) must still equal the PyTorch path."""
    assert run_check(ATEN_CPU_CAPABILITY="default") == "False"
    assert fused_multiply_add_mode() is (torch.backends.cpu.get_cpu_capability() != "DEFAULT")


@pytest.mark.slow
def test_portable_build_equals_pytorch_path():
    """DETRKIT_PORTABLE_BUILD=1 compiles without -march=native: the plain C++ loops instead of the AVX-512 ones."""
    run_check(DETRKIT_PORTABLE_BUILD="1")


AVX2_CHECK = """
import hashlib
import torch
import torch.nn.functional as F
from torch.utils import cpp_extension
from detrkit.kernels import build
from detrkit.processing.segmentation_postprocessing import merge_queries

source = build.CSRC / "panoptic_merge_cpu.cpp"
flags = ["-O3", "-fopenmp", "-march=native", "-mno-avx512f", "-ffp-contract=off"]
key = hashlib.sha256(source.read_bytes() + " ".join([torch.__version__, *flags]).encode()).hexdigest()[:12]
folder = build.cache_root() / f"test-panoptic-avx2-{key}"
folder.mkdir(parents=True, exist_ok=True)
cpp_extension.load(name="detrkit_panoptic_cpu_avx2", sources=[str(source)], extra_cflags=flags,
                   extra_ldflags=["-fopenmp"], build_directory=str(folder), is_python_module=False)
ops = torch.ops.detrkit_panoptic_cpu
probe = torch.rand(4, 13, 17)
expected = F.interpolate(probe[None], size=(71, 67), mode="bilinear", align_corners=False)[0]
modes = [fma for fma in (True, False) if torch.equal(ops.upsample_bilinear(probe, 71, 67, fma), expected)]
assert len(modes) == 1, modes
for num_queries, mask_size, size, ties in [(12, (50, 67), (201, 267), True), (9, (37, 41), (151, 163), False),
                                           (6, (120, 90), (70, 61), True), (1, (40, 30), (161, 121), False)]:
    probs = (torch.randn(num_queries, *mask_size) * (40 if ties else 2)).sigmoid()
    scores = torch.full((num_queries,), 0.75) if ties else torch.rand(num_queries)
    scores[::3] = 1.0
    got = ops.merge(probs, scores, *size, 0.5, modes[0])
    want = merge_queries(probs.clone(), scores, 0.5, size)
    assert all(torch.equal(a.long(), b) for a, b in zip(got[:3], want)), (num_queries, size, ties)
print("ok")
"""


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


@pytest.mark.skipif(not {"avx2", "fma"} <= cpu_flags(), reason="no AVX2 + FMA on this CPU")
@pytest.mark.slow
def test_avx2_build_equals_pytorch_path():
    """The AVX2 code (what CPUs without AVX-512 run), built here with -mno-avx512f, in a separate process."""
    result = subprocess.run([sys.executable, "-c", AVX2_CHECK], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
