"""Test-time augmentation (detrkit.inference.tta): view geometry, the merge rule, and `detrkit evaluate --tta`.

The geometric reference is an oracle detector that reads the box of a bright rectangle straight off its input:
whatever view it sees (mirrored, rescaled, padded), the TTA bookkeeping must bring its box back to the same place
in the original image."""

from types import SimpleNamespace

import pytest
import torch

from detrkit.processing import DetrImageProcessor
from detrkit.inference.tta import TTAConfig, augment_batch, merge_detections, predict_batch_tta, unflip_boxes


class OracleDetector(torch.nn.Module):
    """One query per image: the box (normalized to the image's real area) of the pixels above 0.5 in channel 0,
    class 0 with a confident softmax."""

    def forward(self, pixel_values, pixel_mask):
        boxes = []
        for image, mask in zip(pixel_values, pixel_mask.bool()):
            height, width = int(mask.any(1).sum()), int(mask.any(0).sum())
            ys, xs = torch.nonzero(image[0, :height, :width] > 0.5, as_tuple=True)
            x0, x1 = xs.min().item(), xs.max().item() + 1
            y0, y1 = ys.min().item(), ys.max().item() + 1
            boxes.append([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height])
        logits = torch.tensor([[[4.0, 0.0, 0.0]]]).expand(len(boxes), -1, -1)
        return SimpleNamespace(logits=logits, pred_boxes=torch.tensor(boxes)[:, None])


def _padded_pair():
    """Two images (40x60 and 30x50) with one bright rectangle each, padded to 40x60."""
    pixel_values = torch.zeros(2, 3, 40, 60)
    pixel_mask = torch.zeros(2, 40, 60, dtype=torch.long)
    pixel_mask[0], pixel_mask[1, :30, :50] = 1, 1
    pixel_values[0, 0, 8:24, 5:25] = 1.0  # x 5..25, y 8..24
    pixel_values[1, 0, 10:20, 30:46] = 1.0  # x 30..46, y 10..20
    return pixel_values, pixel_mask


def test_identity_view_and_double_flip():
    pixel_values, pixel_mask = _padded_pair()
    same, same_mask = augment_batch(pixel_values, pixel_mask, 1.0, False)
    assert torch.equal(same, pixel_values) and torch.equal(same_mask, pixel_mask)
    flipped, mask = augment_batch(pixel_values, pixel_mask, 1.0, True)
    assert torch.equal(mask, pixel_mask)  # mirrored inside each real area: padding stays bottom-right
    back, _ = augment_batch(flipped, mask, 1.0, True)
    assert torch.equal(back, pixel_values)


def test_rescaled_view_resizes_each_real_area():
    pixel_values, pixel_mask = _padded_pair()
    batch, mask = augment_batch(pixel_values, pixel_mask, 1.5, False)
    assert batch.shape[-2:] == (60, 90)
    assert mask[1].any(1).sum() == 45 and mask[1].any(0).sum() == 75


def test_unflip_boxes():
    boxes = torch.tensor([[[0.2, 0.3, 0.1, 0.4]]])
    torch.testing.assert_close(unflip_boxes(boxes), torch.tensor([[[0.8, 0.3, 0.1, 0.4]]]))


@pytest.mark.parametrize("scales", [(1.0,), (0.5, 1.0, 2.0)])
def test_every_view_maps_back_to_the_original_box(scales):
    pixel_values, pixel_mask = _padded_pair()
    processor = DetrImageProcessor()
    target_sizes = torch.tensor([[400, 600], [300, 500]])  # the original images were 10x larger
    config = TTAConfig(scales=scales, flip=True)
    detections = predict_batch_tta(OracleDetector(), pixel_values, pixel_mask, target_sizes, processor, config)
    expected = [torch.tensor([50.0, 80.0, 250.0, 240.0]), torch.tensor([300.0, 100.0, 460.0, 200.0])]
    for detection, box in zip(detections, expected):
        assert len(detection["boxes"]) == 1  # the views agree, NMS keeps one
        torch.testing.assert_close(detection["boxes"][0], box, atol=12.0, rtol=0)  # a resized pixel is 10-20 px


def test_merge_is_class_wise_nms_best_first():
    views = [
        {"scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([1, 2]),
         "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])},
        {"scores": torch.tensor([0.8, 0.7]), "labels": torch.tensor([1, 1]),
         "boxes": torch.tensor([[1.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])},
    ]
    merged = merge_detections(views, iou_threshold=0.6, max_detections=100)
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7, 0.5])  # the 0.8 duplicate of class 1 is gone
    assert merged["labels"].tolist() == [1, 1, 2]  # an overlapping box of another class survives
    assert len(merge_detections(views, 0.6, max_detections=2)["scores"]) == 2


@pytest.mark.parametrize("kwargs,match", [(dict(scales=()), "positive"), (dict(scales=(0.0,)), "positive"),
                                          (dict(iou_threshold=0.0), "iou_threshold"),
                                          (dict(max_detections=0), "max_detections")])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TTAConfig(**kwargs)


@pytest.mark.slow
@pytest.mark.e2e
def test_evaluate_command_with_tta(tmp_path):
    """`detrkit evaluate MODEL --data shapes-a --tta` on a tiny random model: runs and records the TTA setting."""
    import json

    from helpers import SMALL

    from detrkit.modeling import DetrConfig, DetrForObjectDetection
    from detrkit.data.builtin.shapes import builtin_categories
    from detrkit.inference.evaluate_command import main

    names = [c["name"] for c in builtin_categories("shapes-a")]
    torch.manual_seed(0)
    model = DetrForObjectDetection(DetrConfig(**{**SMALL, "num_labels": len(names)},
                                              id2label=dict(enumerate(names))))
    model.save_pretrained(tmp_path / "model")
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(tmp_path / "model")
    output = tmp_path / "eval.json"
    assert main([str(tmp_path / "model"), "--data", "shapes-a", "--data-cache", str(tmp_path / "data"),
                 "--max-samples", "4", "--tta", "--tta-scales", "0.9", "1.1", "--output", str(output)]) in (0, None)
    report = json.loads(output.read_text())
    assert report["tta"] == {"scales": [0.9, 1.1], "flip": True, "merge": "class-wise NMS"}
    assert 0.0 <= report["map"] <= 1.0
