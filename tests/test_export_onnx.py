"""ONNX export against PyTorch: onnxruntime (CPU) runs the exported graph at sizes other than the traced one,
batch 2, and agrees with the PyTorch model within 1e-4; the file passes onnx.checker. DETR, DETR-DC5, single-scale
Deformable DETR and padded batches here; the other Deformable DETR variants and the in-graph post-processing in
test_export_onnx_deformable.py; torch.export in test_export_torch.py."""
import numpy as np
import pytest
import torch

from conftest import SMALL, padded_batch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from detrkit.deploy.export import export_onnx  # noqa: E402
from detrkit.deploy.export_command import main  # noqa: E402
from detrkit.modeling import (  # noqa: E402
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
)
from detrkit.processing import DeformableDetrImageProcessor, DetrImageProcessor  # noqa: E402

TOLERANCE = 1e-4
SIZES = ((128, 160), (160, 96))  # neither the traced size (80 x 112 here) nor its 3 x 4 feature map
VARIANTS = {
    "detr": (DetrConfig, {}),
    "detr-dc5": (DetrConfig, dict(dilation=True)),
    "deformable-single-scale": (DeformableDetrConfig, dict(num_feature_levels=1)),
    "deformable": (DeformableDetrConfig, {}),
    "deformable-box-refine": (DeformableDetrConfig, dict(with_box_refine=True)),
    "deformable-two-stage": (DeformableDetrConfig, dict(with_box_refine=True, two_stage=True,
                                                         two_stage_num_proposals=SMALL["num_queries"])),
}


def build(name, seed=0):
    config_class, kwargs = VARIANTS[name]
    torch.manual_seed(seed)
    config = config_class(**SMALL, **kwargs, use_pretrained_backbone=False)
    model_class = DeformableDetrForObjectDetection if config_class is DeformableDetrConfig else DetrForObjectDetection
    model = model_class(config).eval()
    heads = model.class_embed if config_class is DeformableDetrConfig else [model.class_labels_classifier]
    with torch.no_grad():  # spread-out class scores, so top-k and argmax are not decided by near-ties
        for head in heads:
            head.bias.normal_(0, 1)
    return model


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def max_diff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - b.double().numpy()).max())


def check_against_pytorch(name, tmp_path):
    model = build(name)
    path = export_onnx(model, tmp_path / f"{name}.onnx", example_size=(80, 112))
    onnx.checker.check_model(str(path), full_check=True)
    runtime = session(path)
    assert [i.name for i in runtime.get_inputs()] == ["pixel_values"]
    generator = torch.Generator().manual_seed(1)
    for height, width in SIZES:
        pixel_values = torch.randn(2, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model(pixel_values)
        logits, boxes = runtime.run(["logits", "pred_boxes"], {"pixel_values": pixel_values.numpy()})
        assert logits.shape == tuple(expected.logits.shape)
        assert max_diff(logits, expected.logits) <= TOLERANCE, (name, height, width)
        assert max_diff(boxes, expected.pred_boxes) <= TOLERANCE, (name, height, width)


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
