"""to_supervision: the processor's detections and panoptic segments as supervision.Detections, field by field."""
import numpy as np
import pytest
import torch

sv = pytest.importorskip("supervision")

from detrkit.deploy.supervision import to_supervision  # noqa: E402


def test_detections():
    results = {"scores": torch.tensor([0.9, 0.6]), "labels": torch.tensor([2, 0]),
               "boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.5, 6.5, 7.5, 9.0]])}
    detections = to_supervision(results, {"0": "cat", "2": "dog"})
    assert isinstance(detections, sv.Detections) and len(detections) == 2
    np.testing.assert_allclose(detections.xyxy, results["boxes"].numpy())
    np.testing.assert_allclose(detections.confidence, results["scores"].numpy())
    assert detections.class_id.tolist() == [2, 0]
    assert list(detections.data["class_name"]) == ["dog", "cat"]


def test_panoptic_segments():
    segmentation = torch.zeros(6, 8, dtype=torch.int32)
    segmentation[1:3, 2:5] = 1
    segmentation[4:6, 0:2] = 2
    results = {"segmentation": segmentation, "segments_info": [
        {"id": 1, "label_id": 3, "was_fused": False, "score": 0.8},
        {"id": 2, "label_id": 1, "was_fused": False, "score": 0.7}]}
    detections = to_supervision(results)
    assert len(detections) == 2 and detections.class_id.tolist() == [3, 1]
    assert detections.mask.shape == (2, 6, 8)
    assert detections.mask[0].sum() == 6 and detections.mask[1].sum() == 4
    np.testing.assert_allclose(detections.xyxy[0], [2, 1, 4, 2])  # supervision's boxes from the mask


def test_wrong_input_is_named():
    with pytest.raises(TypeError, match="one image's results"):
        to_supervision([{}])
    with pytest.raises(ValueError, match="got \\['logits'\\]"):
        to_supervision({"logits": torch.zeros(1)})
