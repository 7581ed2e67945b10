"""ONNX export of multi-scale Deformable DETR, with box refinement and two-stage, against PyTorch (onnxruntime CPU,
two sizes, batch 2, 1e-4), and the in-graph post-processing against the image processor's."""
import pytest
import torch

from helpers import TOLERANCE, build, check_against_pytorch, max_diff, session

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from detrkit.deploy.export import export_onnx  # noqa: E402
from detrkit.processing import DeformableDetrImageProcessor, DetrImageProcessor  # noqa: E402


@pytest.mark.parametrize("name", ["deformable", "deformable-box-refine", "deformable-two-stage"])
def test_deformable_variants(name, tmp_path):
    check_against_pytorch(name, tmp_path)


@pytest.mark.parametrize("name", ["detr", "deformable-two-stage"])
def test_postprocess_in_graph_equals_the_processor(name, tmp_path):
    model = build(name)
    processor = DeformableDetrImageProcessor() if "deformable" in name else DetrImageProcessor()
    top_k = 10  # fewer than queries x classes: the top-k selection is part of what is compared
    path = export_onnx(model, tmp_path / "post.onnx", postprocess=True, top_k=top_k, example_size=(80, 112))
    pixel_values = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    target_sizes = torch.tensor([[480, 640], [300, 200]])
    scores, labels, boxes = session(path).run(
        ["scores", "labels", "boxes"], {"pixel_values": pixel_values.numpy(), "target_sizes": target_sizes.numpy()})
    with torch.no_grad():
        outputs = model(pixel_values)
    kwargs = dict(top_k=top_k) if "deformable" in name else {}
    expected = processor.post_process_object_detection(outputs, threshold=-1.0, target_sizes=target_sizes, **kwargs)
    for i, result in enumerate(expected):
        assert labels[i].tolist() == result["labels"].tolist()
        assert max_diff(scores[i], result["scores"]) <= TOLERANCE
        assert max_diff(boxes[i], result["boxes"]) <= TOLERANCE * 640  # pixels: relative tolerance
