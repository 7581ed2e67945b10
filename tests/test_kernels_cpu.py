"""The C++ CPU kernel (through `detrkit.kernels`) against the PyTorch reference; op plumbing and fallbacks.

The first test builds the CPU kernel (about 20 s on 2 cores, cached afterwards) and fails if it cannot."""
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import compare, make_inputs

import detrkit.kernels as kernels
from detrkit.kernels import build, multi_scale_deformable_attention
from detrkit.modeling.deformable_sampling import multi_scale_deformable_attention as reference


def test_cpu_kernel_builds_and_loads():
    status = kernels.load_kernel("cpu")
    assert status.loaded, status.error
    assert hasattr(torch.ops.detrkit_msda_cpu, "forward")


CASES = {
    "paper shape (D=32 path)": dict(shapes=[(6, 9), (3, 5), (2, 3), (1, 2)], head_dim=32, heads=8),
    "odd head dim": dict(shapes=[(5, 4), (2, 2)], head_dim=5),
    "single level single point": dict(shapes=[(7, 3)], points=1, head_dim=4),
    "single-pixel levels": dict(shapes=[(1, 1), (1, 1), (2, 1)], head_dim=3),
    "batch 1 one head": dict(shapes=[(4, 6), (2, 3)], batch=1, heads=1, head_dim=16),
    "far outside": dict(shapes=[(4, 4), (2, 2)], low=-3.0, high=4.0),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_fp64(case):
    compare(make_inputs(**CASES[case], dtype=torch.float64), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_fp32(case):
    compare(make_inputs(**CASES[case], dtype=torch.float32, seed=1), atol=2e-5, rtol=1e-4)


def test_borders_and_pixel_centres():
    """Locations on level borders, exactly on pixel centres (where the bilinear gradient switches cells) and
    exactly one pixel outside (x = -1: zero output, non-zero location gradient)."""
    shapes = [(4, 5), (1, 1)]
    value, spatial_shapes, starts, _, weights = make_inputs(shapes, batch=1, queries=81, heads=1, points=1)
    grid = torch.tensor([0.0, 1.0, 0.1, 0.5, 0.9, -0.125, 1.125, -0.1, 1.1], dtype=torch.float64)
    xy = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(81, 2)
    locations = xy[None, :, None, None, None, :].expand(1, 81, 1, 2, 1, 2).contiguous()
    compare((value, spatial_shapes, starts, locations, weights), atol=1e-10, rtol=1e-10)


def test_masked_values_non_contiguous_and_half_types():
    value, spatial_shapes, starts, locations, weights = make_inputs([(5, 6), (3, 3)], head_dim=6)
    padding = torch.rand(value.shape[:2], generator=torch.Generator().manual_seed(0)) < 0.3
    value = value.masked_fill(padding[:, :, None, None], 0)  # what the model does to padded pixels
    # Non-contiguous views of the same numbers: value through a permute, locations with levels and points swapped in memory.
    value_nc = value.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    locations_nc = locations.transpose(3, 4).contiguous().transpose(3, 4)
    weights_nc = weights.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (value_nc.is_contiguous() or locations_nc.is_contiguous() or weights_nc.is_contiguous())
    compare((value_nc, spatial_shapes, starts, locations_nc, weights_nc), atol=1e-10, rtol=1e-10)
    # bfloat16 values with float32 locations (what autocast produces): computed in float32 inside.
    bf16 = multi_scale_deformable_attention(value.bfloat16(), spatial_shapes, starts, locations.float(), weights.float())
    expected = reference(value.bfloat16().float(), spatial_shapes, starts, locations.float(), weights.float())
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), expected, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("batch,queries", [(0, 5), (2, 0)])
def test_empty_batches(batch, queries):
    inputs = make_inputs([(3, 4)], batch=batch, queries=queries)
    output = multi_scale_deformable_attention(*inputs)
    assert output.shape == reference(*inputs).shape == (batch, queries, 3 * 8)
    compare(inputs, atol=0, rtol=0)


def test_gradcheck_fp64():
    value, spatial_shapes, starts, locations, weights = make_inputs([(3, 4), (2, 2)], batch=1, queries=3, heads=2,
                                                                    head_dim=3, points=2, low=0.05, high=0.95)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(lambda v, l, w: multi_scale_deformable_attention(v, spatial_shapes, starts, l, w),
                                    leaves, eps=1e-6, atol=1e-5)


def test_torch_compile_fullgraph_and_export():
    value, spatial_shapes, starts, locations, weights = make_inputs([(4, 5), (2, 3)], dtype=torch.float32)

    def layer(value, locations, weights):
        return multi_scale_deformable_attention(value * 2, spatial_shapes, starts, locations, weights.softmax(-1)).relu()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    expected_leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    output = compiled(*leaves)
    output.sum().backward()
    expected = layer(*expected_leaves)
    expected.sum().backward()
    torch.testing.assert_close(output, expected)
    for got, want in zip(leaves, expected_leaves):
        torch.testing.assert_close(got.grad, want.grad)

    class Layer(torch.nn.Module):
        def forward(self, value, locations, weights):
            return layer(value, locations, weights)

    exported = torch.export.export(Layer(), (value, locations, weights))
    assert any("detrkit.multi_scale_deformable_attention" in str(node.target) for node in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(value, locations, weights), layer(value, locations, weights))


def test_env_var_and_flag_force_reference(monkeypatch):
    inputs = make_inputs([(3, 4)])

    def no_kernel(*args):
        raise AssertionError("the kernel op was called")

    monkeypatch.setattr(kernels, "msda_forward", no_kernel)
    torch.testing.assert_close(multi_scale_deformable_attention(*inputs, use_kernel=False), reference(*inputs))
    monkeypatch.setenv("DETRKIT_DISABLE_KERNELS", "1")
    torch.testing.assert_close(multi_scale_deformable_attention(*inputs), reference(*inputs))
    monkeypatch.setenv("DETRKIT_DISABLE_KERNELS", "0")
    with pytest.raises(AssertionError, match="kernel op was called"):
        multi_scale_deformable_attention(*inputs)


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(build, "_status", {})
    monkeypatch.setattr(kernels, "_warned", set())

    def broken(backend):
        raise RuntimeError("Error building extension 'detrkit_msda_cpu'\nmsda_cpu.cpp:1: error: no compiler\nmore")

    monkeypatch.setattr(build, "_build_and_load", broken)
    inputs = make_inputs([(3, 4)])
    with pytest.warns(RuntimeWarning, match=r"cpu .*unavailable.*error: no compiler") as record:
        output = multi_scale_deformable_attention(*inputs)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    torch.testing.assert_close(output, reference(*inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        multi_scale_deformable_attention(*inputs)  # no second warning
    # The op itself (what a compiled graph calls) falls back too, gradients included.
    compare_op = kernels.msda_forward(*inputs)
    torch.testing.assert_close(compare_op, reference(*inputs))


@pytest.mark.parametrize("mutate,message", [
    (lambda i: {**i, "value": i["value"][0]}, "value must be .batch, sum of h.w"),
    (lambda i: {**i, "value": i["value"].long()}, "value must be a floating point tensor, got torch.int64"),
    (lambda i: {**i, "sampling_locations": i["sampling_locations"][..., :1]}, "sampling_locations must be"),
    (lambda i: {**i, "sampling_locations": i["sampling_locations"][:, :, :2]}, r"to match value"),
    (lambda i: {**i, "attention_weights": i["attention_weights"][..., :2]}, "attention_weights must have shape"),
    (lambda i: {**i, "spatial_shapes": i["spatial_shapes"].float()}, "spatial_shapes must be an integer tensor"),
    (lambda i: {**i, "spatial_shapes": i["spatial_shapes"][:1]}, r"spatial_shapes must have shape \(2, 2\)"),
    (lambda i: {**i, "level_start_index": i["level_start_index"][None]}, "level_start_index must have shape"),
    (lambda i: {**i, "spatial_shapes": i["spatial_shapes"] * 2}, "value has 16 positions but spatial_shapes"),
    (lambda i: {**i, "level_start_index": i["level_start_index"] + 1}, r"level_start_index must be \[0, 12\]"),
    (lambda i: {**i, "attention_weights": i["attention_weights"].to("meta")}, "attention_weights is on meta"),
])
def test_bad_inputs_name_the_argument(mutate, message):
    names = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
    inputs = dict(zip(names, make_inputs([(3, 4), (2, 2)])))
    with pytest.raises((ValueError, TypeError), match=message):
        multi_scale_deformable_attention(**mutate(inputs))


def test_second_process_loads_from_cache_without_compiling():
    assert kernels.load_kernel("cpu").loaded
    code = (
        "import torch.utils.cpp_extension as c\n"
        "def fail(*a, **k): raise SystemExit('cpp_extension.load was called')\n"
        "c.load = fail\n"
        "from detrkit.kernels import load_kernel\n"
        "status = load_kernel('cpu')\n"
        "assert status.loaded, status.error\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cuda_home_found_behind_wrapper_script(tmp_path, monkeypatch):
    toolkit = tmp_path / "cuda-12.9"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "bin" / "nvcc").write_text("binary")
    (toolkit / "bin" / "nvcc").chmod(0o755)
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    (wrappers / "nvcc").write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    (wrappers / "nvcc").chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrappers))
    assert build.find_cuda_home() == str(toolkit)
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert build.find_cuda_home() == str(toolkit)


def test_arch_flags_and_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    assert build._gencode_flags(build.cuda_arch_list()) == [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90"]
    monkeypatch.setenv("DETRKIT_CACHE", str(tmp_path))
    assert build.build_directory("cpu").parent == tmp_path
    assert torch.__version__.split("+")[0] in build.build_directory("cpu").name


def test_deformable_detr_same_with_kernel_and_reference(monkeypatch):
    """The whole model (freshly initialised: sampling points sit exactly on pixel centres, where the location
    gradient is one-sided) gives the same outputs, loss and gradients with the kernel and the reference."""
    from helpers import DEFORMABLE_SMALL as SMALL
    from helpers import DEFORMABLE_VARIANTS as VARIANTS
    from helpers import deformable_batch as padded_batch

    from detrkit.modeling import DeformableDetrConfig, DeformableDetrForObjectDetection

    kernel_calls = []
    monkeypatch.setattr(kernels, "msda_forward", lambda *args: kernel_calls.append(1) or kernels.ops.msda_forward(*args))
    pixel_values, pixel_mask, labels = padded_batch()
    results = []
    for disable in (False, True):
        kernel_calls.clear()
        torch.manual_seed(0)
        config = DeformableDetrConfig(**SMALL, **VARIANTS["box-refine"], dropout=0.0, disable_custom_kernels=disable)
        model = DeformableDetrForObjectDetection(config).train()
        outputs = model(pixel_values, pixel_mask, labels=labels)
        outputs.loss.backward()
        offsets = model.model.encoder.layers[0].self_attn.sampling_offsets
        results.append((outputs.logits, outputs.pred_boxes, outputs.loss, offsets.weight.grad, offsets.bias.grad))
        assert bool(kernel_calls) != disable  # encoder + decoder layers went through the kernel, or none did
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
