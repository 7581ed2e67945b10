"""torch.export of the whole detection model (static shape) gives the eager model's outputs."""
import pytest
import torch

from helpers import TOLERANCE, build


@pytest.mark.parametrize("name", ["detr", "deformable"])
def test_torch_export_of_the_whole_model(name):
    model = build(name)
    pixel_values = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    exported = torch.export.export(model, (pixel_values,))
    with torch.no_grad():
        expected = model(pixel_values)
        outputs = exported.module()(pixel_values)
    assert (outputs.logits - expected.logits).abs().max() <= TOLERANCE
    assert (outputs.pred_boxes - expected.pred_boxes).abs().max() <= TOLERANCE
