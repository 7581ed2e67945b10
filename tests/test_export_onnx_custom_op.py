"""Deformable attention in ONNX: the one-GridSample form the portable export traces (against the per-level
PyTorch reference, eager, float64, points inside, across and far outside every level) and the opt-in custom node
`ai.detrkit::MultiScaleDeformableAttention` run by onnxruntime through onnxruntime-extensions (against PyTorch at
two sizes, batch 2, 1e-4; onnx.checker; a clear error without onnxruntime-extensions)."""
import sys

import pytest
import torch

from helpers import SIZES, TOLERANCE, build, max_diff, padded_batch, session

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


from detrkit.deploy import onnx_session  # noqa: E402
from detrkit.deploy.export import export_onnx  # noqa: E402
from detrkit.deploy.export_command import main  # noqa: E402
from detrkit.deploy.onnx_custom_ops import DOMAIN, OP_TYPE, uses_custom_op  # noqa: E402
from detrkit.modeling.deformable_sampling import (  # noqa: E402
    multi_scale_deformable_attention,
    one_canvas_msda,
)
from detrkit.processing import DeformableDetrImageProcessor, DetrImageProcessor  # noqa: E402

try:
    import onnxruntime_extensions  # noqa: F401
    needs_extensions = pytest.mark.skipif(False, reason="onnxruntime-extensions is installed")
except ImportError:
    needs_extensions = pytest.mark.skip(reason="onnxruntime-extensions is not installed (pip install '.[test]')")


def node_types(path):
    return [(node.domain, node.op_type) for node in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize("shapes", [
    [(10, 13), (5, 7), (3, 4), (2, 2)],  # a feature pyramid
    [(6, 3), (3, 9), (4, 4)],  # widths that grow: the canvas takes the widest
    [(1, 1), (7, 2)],  # one-pixel levels
])
def test_one_canvas_equals_the_per_level_sum(shapes):
    generator = torch.Generator().manual_seed(0)
    total, levels = sum(h * w for h, w in shapes), len(shapes)
    value = torch.randn(2, total, 3, 5, generator=generator, dtype=torch.float64)
    # x, y in [-1, 2]: inside, across the border (partly zero-padded) and far outside every level
    locations = torch.rand(2, 40, 3, levels, 4, 2, generator=generator, dtype=torch.float64) * 3 - 1
    size = torch.tensor([(w, h) for h, w in shapes], dtype=torch.float64)[:, None]  # (L, 1, 2)
    # exactly on the clamp bounds (one pixel beyond the edge pixels' centres) and a hair inside them
    locations[:, :4] = (-0.5 / size)
    locations[:, 4:8] = (1 + 0.5 / size)
    locations[:, 8:12] = (1 + 0.5 / size) - 1e-9
    locations[:, 12:16] = (-0.5 / size) + 1e-9
    weights = torch.rand(2, 40, 3, levels, 4, generator=generator, dtype=torch.float64)
    expected = multi_scale_deformable_attention(value, torch.tensor(shapes), None, locations, weights)
    torch.testing.assert_close(one_canvas_msda(value, shapes, locations, weights), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("level", [0, 1])
def test_one_canvas_never_reads_a_neighbouring_level(level):
    """Points beyond level 0's bottom edge (or above level 1's top edge) must read zeros, not the other level,
    which holds huge values here; the points' own level is all zeros."""
    shapes = [(4, 5), (3, 5)]
    value = torch.full((1, 35, 1, 1), 1e6, dtype=torch.float64)
    value[0, slice(0, 20) if level == 0 else slice(20, 35)] = 0
    # y just past the edge (partly on the edge row), two rows past it, far past it; x at the centre
    height = shapes[level][0]
    beyond = torch.tensor([0.4, 2.0, 30.0], dtype=torch.float64) / height
    y = 1 + beyond if level == 0 else -beyond
    locations = torch.zeros(1, 3, 1, 2, 1, 2, dtype=torch.float64)
    locations[0, :, 0, level, 0] = torch.stack([torch.full_like(y, 0.5), y], -1)
    weights = torch.zeros(1, 3, 1, 2, 1, dtype=torch.float64)
    weights[..., level, :] = 1
    output = one_canvas_msda(value, shapes, locations, weights)
    assert output.abs().max() == 0
    expected = multi_scale_deformable_attention(value, torch.tensor(shapes), None, locations, weights)
    assert expected.abs().max() == 0


def test_portable_export_has_one_grid_sample_per_encoder_attention(tmp_path):
    """The speed of the portable file rests on this form: one GridSample per encoder attention, not one per level
    (the decoder's 300 queries keep one per level: the canvas would cost more than it saves there)."""
    model = build("deformable")  # 4 levels, 1 encoder + 2 decoder layers
    path = export_onnx(model, tmp_path / "portable.onnx", example_size=(80, 112))
    config = model.config
    expected = config.encoder_layers + config.decoder_layers * config.num_feature_levels
    assert node_types(path).count(("", "GridSample")) == expected
    assert not uses_custom_op(path)


@needs_extensions
@pytest.mark.parametrize("name", ["deformable", "deformable-two-stage"])
def test_custom_op_matches_pytorch(name, tmp_path):
    model = build(name)
    path = export_onnx(model, tmp_path / f"{name}.onnx", example_size=(80, 112), msda_op="detrkit")
    onnx.checker.check_model(str(path), full_check=True)
    file = onnx.load(str(path))
    assert {opset.domain: opset.version for opset in file.opset_import}[DOMAIN] == 1
    types = node_types(path)
    assert types.count((DOMAIN, OP_TYPE)) == model.config.encoder_layers + model.config.decoder_layers
    assert ("", "GridSample") not in types
    runtime = onnx_session(path)
    generator = torch.Generator().manual_seed(1)
    for height, width in SIZES:
        pixel_values = torch.randn(2, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model(pixel_values)
        logits, boxes = runtime.run(["logits", "pred_boxes"], {"pixel_values": pixel_values.numpy()})
        assert max_diff(logits, expected.logits) <= TOLERANCE, (name, height, width)
        assert max_diff(boxes, expected.pred_boxes) <= TOLERANCE, (name, height, width)


@needs_extensions
def test_custom_op_with_a_padded_batch(tmp_path):
    model = build("deformable")
    path = export_onnx(model, tmp_path / "masked.onnx", pixel_mask=True, example_size=(80, 112), msda_op="detrkit")
    pixel_values, pixel_mask = padded_batch(((96, 128), (40, 60)))
    with torch.no_grad():
        expected = model(pixel_values, pixel_mask)
    logits, boxes = onnx_session(path).run(None, {"pixel_values": pixel_values.numpy(),
                                                  "pixel_mask": pixel_mask.numpy()})
    assert max_diff(logits, expected.logits) <= TOLERANCE
    assert max_diff(boxes, expected.pred_boxes) <= TOLERANCE


def test_custom_op_file_without_onnxruntime_extensions(tmp_path, monkeypatch):
    path = export_onnx(build("deformable"), tmp_path / "custom.onnx", example_size=(80, 112), msda_op="detrkit")
    with pytest.raises(Exception, match=OP_TYPE):  # plain onnxruntime does not know the op
        session(path)
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match="pip install onnxruntime-extensions"):
        onnx_session(path)


def test_command_line_msda_op(tmp_path, capsys):
    model = build("deformable")
    model.save_pretrained(tmp_path / "model")
    DeformableDetrImageProcessor().save_pretrained(tmp_path / "model")
    output = tmp_path / "custom.onnx"
    assert main([str(tmp_path / "model"), "--output", str(output), "--msda-op", "detrkit"]) == 0
    assert uses_custom_op(output)
    build("detr").save_pretrained(tmp_path / "detr")
    DetrImageProcessor().save_pretrained(tmp_path / "detr")
    assert main([str(tmp_path / "detr"), "--output", str(tmp_path / "detr.onnx"), "--msda-op", "detrkit"]) == 2
    assert "has none" in capsys.readouterr().err


def test_custom_op_export_fails_when_the_node_is_not_reached(tmp_path, monkeypatch):
    """A model whose attention code is not detrkit's (remote code) would silently keep GridSample: an error instead."""
    import contextlib

    from detrkit.deploy import onnx_custom_ops

    monkeypatch.setattr(onnx_custom_ops, "custom_msda_export", contextlib.nullcontext)
    with pytest.raises(ValueError, match="reached the custom node"):
        export_onnx(build("deformable"), tmp_path / "custom.onnx", example_size=(80, 112), msda_op="detrkit")
