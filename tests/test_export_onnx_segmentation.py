"""ONNX export of the segmentation models (DETR and Deformable DETR + mask head) against PyTorch: logits, boxes and
mask logits at two sizes, batch 2, within 1e-4; with --postprocess, each detection's mask at the input size.
(ACT-switched DETR: test_export_onnx_act.py.)"""
import pytest
import torch
import torch.nn.functional as F

from helpers import SMALL, TOLERANCE, max_diff, session

pytest.importorskip("onnxruntime")

from detrkit.deploy.export import export_onnx  # noqa: E402
import detrkit.modeling.modeling_detr_segmentation as segmentation  # noqa: E402
from detrkit.modeling import DeformableDetrConfig, DetrConfig  # noqa: E402

MASK_SMALL = dict(SMALL, encoder_attention_heads=8)  # the mask head's GroupNorm needs d_model + heads = 8k


@pytest.mark.parametrize("deformable", [False, True])
def test_segmentation_models(deformable, tmp_path):
    torch.manual_seed(0)
    if deformable:
        model = segmentation.DeformableDetrForSegmentation(DeformableDetrConfig(**MASK_SMALL, use_pretrained_backbone=False))
    else:
        model = segmentation.DetrForSegmentation(DetrConfig(**MASK_SMALL, use_pretrained_backbone=False))
    model.eval()
    top_k = 6
    path = export_onnx(model, tmp_path / "seg.onnx", postprocess=True, top_k=top_k, example_size=(80, 112))
    runtime = session(path)
    generator = torch.Generator().manual_seed(1)
    for height, width in ((96, 128), (128, 96)):
        pixel_values = torch.randn(2, 3, height, width, generator=generator)
        target_sizes = torch.tensor([[height, width]] * 2)
        with torch.no_grad():
            expected = model(pixel_values)
        logits, boxes, pred_masks, scores, labels, _, masks = runtime.run(
            None, {"pixel_values": pixel_values.numpy(), "target_sizes": target_sizes.numpy()})
        assert max_diff(logits, expected.logits) <= TOLERANCE
        assert max_diff(boxes, expected.pred_boxes) <= TOLERANCE
        assert max_diff(pred_masks, expected.pred_masks) <= TOLERANCE
        # the mask of each detection's query, upsampled to the input: queries recovered independently here
        if deformable:
            queries = expected.logits.sigmoid().flatten(1).topk(top_k, dim=1).indices // expected.logits.shape[-1]
        else:
            queries = torch.arange(SMALL["num_queries"]).expand(2, -1)
        reference = torch.stack([F.interpolate(expected.pred_masks[i, q][None], size=(height, width),
                                               mode="bilinear", align_corners=False)[0].sigmoid()
                                 for i, q in enumerate(queries)])
        assert masks.shape == (2, queries.shape[1], height, width)
        assert max_diff(masks, reference) <= TOLERANCE
