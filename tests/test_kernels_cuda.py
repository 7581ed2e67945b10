"""The CUDA kernel: an nvcc build that needs no GPU (runs in CI, ~1-2 min the first time, then cached), and
runtime parity with the PyTorch reference (skipped without a GPU)."""
import pytest
import torch
from helpers import compare, make_inputs

import detrkit.kernels as kernels
from detrkit.kernels import build, multi_scale_deformable_attention
from detrkit.modeling.deformable_sampling import multi_scale_deformable_attention as reference

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(torch.version.cuda is None or build.find_cuda_home() is None,
                    reason="needs a CUDA build of torch and the CUDA toolkit (nvcc)")
@pytest.mark.slow
def test_cuda_kernel_compiles_with_nvcc():
    status = kernels.load_kernel("cuda")
    assert status.loaded, status.error
    assert hasattr(torch.ops.detrkit_msda_cuda, "backward")


def on_gpu(inputs):
    return tuple(t.cuda() for t in inputs)


CASES = {
    "paper shape, D=32": dict(shapes=[(6, 9), (3, 5), (2, 3), (1, 2)], head_dim=32, heads=8),
    "odd head dim (scalar loads)": dict(shapes=[(5, 4), (2, 2)], head_dim=5),
    "D=48 > lanes*vec (channel loop)": dict(shapes=[(5, 4), (2, 2)], head_dim=48, heads=2),
    "D=256 one head": dict(shapes=[(4, 4)], head_dim=256, heads=1, queries=3),
    "single-pixel levels, far outside": dict(shapes=[(1, 1), (2, 1)], low=-3.0, high=4.0),
    "batch 3, many queries": dict(shapes=[(16, 20), (8, 10)], batch=3, queries=700, heads=4, head_dim=16),
}


@needs_gpu
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_fp64_and_fp32(case):
    compare(on_gpu(make_inputs(**CASES[case], dtype=torch.float64)), atol=1e-10, rtol=1e-10)
    compare(on_gpu(make_inputs(**CASES[case], dtype=torch.float32, seed=1)), atol=5e-5, rtol=1e-4)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["paper shape, D=32", "odd head dim (scalar loads)", "batch 3, many queries"])
def test_half_types_accumulate_in_fp32(dtype, case):
    """fp16/bf16 values with fp32 locations and weights (what autocast gives): against the float64 reference on
    the same rounded values, to the precision of the output type."""
    value, shapes, starts, locations, weights = on_gpu(make_inputs(**CASES[case], dtype=torch.float32))
    value = value.to(dtype)
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    output = multi_scale_deformable_attention(leaves[0], shapes, starts, leaves[1], leaves[2])
    assert output.dtype == dtype
    grad = torch.randn(output.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    grads = torch.autograd.grad(output, leaves, grad.to(dtype))
    assert [g.dtype for g in grads] == [dtype, torch.float32, torch.float32]
    exact = [t.detach().double().requires_grad_() for t in (value, locations, weights)]
    expected = reference(exact[0], shapes, starts, exact[1], exact[2])
    expected_grads = torch.autograd.grad(expected, exact, grad.to(dtype).double())
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.float16 else dict(atol=8e-2, rtol=5e-2)
    torch.testing.assert_close(output.double(), expected, **tol)
    for got, want in zip(grads, expected_grads):
        scale = want.abs().max().clamp(min=1)  # location gradients scale with the level size
        torch.testing.assert_close(got.double() / scale, want / scale, **tol)


@needs_gpu
def test_pixel_centres_misaligned_and_empty():
    # Locations exactly on pixel centres and borders: the same one-sided gradients as grid_sample on CUDA.
    value, shapes, starts, _, weights = make_inputs([(4, 5), (1, 1)], batch=1, queries=81, heads=1, points=1,
                                                    dtype=torch.float32)
    grid = torch.tensor([0.0, 1.0, 0.1, 0.5, 0.9, -0.125, 1.125, -0.1, 1.1])
    xy = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(81, 2)
    locations = xy[None, :, None, None, None, :].expand(1, 81, 1, 2, 1, 2).contiguous()
    compare(on_gpu((value, shapes, starts, locations, weights)), atol=1e-5, rtol=1e-5)
    # A contiguous value whose data pointer is not 16-byte aligned falls back to scalar loads.
    value, shapes, starts, locations, weights = on_gpu(make_inputs([(5, 6)], head_dim=8, dtype=torch.float32))
    storage = torch.empty(value.numel() + 1, device="cuda")
    shifted = storage[1:].view_as(value).copy_(value)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 != 0
    torch.testing.assert_close(multi_scale_deformable_attention(shifted, shapes, starts, locations, weights),
                               reference(value, shapes, starts, locations, weights))
    for batch, queries in ((0, 4), (2, 0)):
        compare(on_gpu(make_inputs([(3, 4)], batch=batch, queries=queries)), atol=0, rtol=0)


@needs_gpu
def test_torch_compile_on_gpu():
    value, shapes, starts, locations, weights = on_gpu(make_inputs([(4, 5), (2, 3)], dtype=torch.float32))

    def layer(value, locations, weights):
        return multi_scale_deformable_attention(value, shapes, starts, locations, weights.softmax(-1)) * 2

    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(value, locations, weights), layer(value, locations, weights))
