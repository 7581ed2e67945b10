"""ONNX export against PyTorch: onnxruntime (CPU) runs the exported graph at sizes other than the traced one,
batch 2, and agrees with the PyTorch model within 1e-4; the file passes onnx.checker. DETR, DETR-DC5, single-scale
Deformable DETR and padded batches here; the other Deformable DETR variants and the in-graph post-processing in
test_export_onnx_deformable.py; torch.export in test_export_torch.py."""
import pytest
import torch
from helpers import TOLERANCE, build, check_against_pytorch, max_diff, padded_batch, session

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from detrkit.deploy.export import export_onnx  # noqa: E402
from detrkit.deploy.export_command import main  # noqa: E402
from detrkit.processing import DeformableDetrImageProcessor, DetrImageProcessor  # noqa: E402


@pytest.mark.parametrize("name", ["detr", "detr-dc5", "deformable-single-scale"])
def test_onnxruntime_matches_pytorch(name, tmp_path):
    check_against_pytorch(name, tmp_path)


@pytest.mark.parametrize("name", ["detr", "deformable"])
def test_padded_batch_through_pixel_mask(name, tmp_path):
    """Two images of different sizes padded into one batch: the mask input must reach every attention."""
    model = build(name)
    path = export_onnx(model, tmp_path / "masked.onnx", pixel_mask=True, example_size=(80, 112))
    pixel_values, pixel_mask = padded_batch(((96, 128), (40, 60)))
    with torch.no_grad():
        expected = model(pixel_values, pixel_mask)
        unmasked = model(pixel_values)
    logits, boxes = session(path).run(None, {"pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.numpy()})
    assert max_diff(logits, expected.logits) <= TOLERANCE
    assert max_diff(boxes, expected.pred_boxes) <= TOLERANCE
    assert max_diff(logits, unmasked.logits) > 1e-3  # the mask changes the answer, so the check above means something


def test_command_line(tmp_path, capsys):
    model = build("detr")
    model.save_pretrained(tmp_path / "model")
    DetrImageProcessor().save_pretrained(tmp_path / "model")
    output = tmp_path / "detr.onnx"
    assert main([str(tmp_path / "model"), "--output", str(output), "--opset", "17", "--postprocess"]) == 0
    assert "onnx.checker passed" in capsys.readouterr().out
    names = [i.name for i in session(output).get_inputs()]
    assert names == ["pixel_values", "target_sizes"]
    with pytest.raises(ValueError, match="GridSample"):
        export_onnx(model, tmp_path / "old.onnx", opset=13)
