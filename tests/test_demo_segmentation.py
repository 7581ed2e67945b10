"""The demo's picture of a segmentation model: the segments of the listed detections are drawn over the image."""
import numpy as np
import torch
from PIL import Image

from helpers import SMALL

import detrkit.modeling.modeling_detr_segmentation as segmentation
from detrkit.deploy.demo import analyse, detections_picture, kept, table_html
from detrkit.modeling import DetrConfig
from detrkit.processing import DetrImageProcessor


def test_segments_are_drawn():
    torch.manual_seed(0)
    model = segmentation.DetrForSegmentation(
        DetrConfig(**dict(SMALL, encoder_attention_heads=8), use_pretrained_backbone=False)).eval()
    head = model.detr.class_labels_classifier
    with torch.no_grad():  # queries that differ, and whose best class is an object (panoptic keeps only those)
        head.weight.normal_(0, 1)
        head.bias[-1] = -5.0
    processor = DetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 128})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8))
    maps = analyse(model, processor, image)
    threshold = float(np.median(maps["detections"]["scores"]))
    indices = kept(maps, threshold)
    assert 0 < len(indices) < SMALL["num_queries"]
    assert table_html(maps, indices, model.config.id2label).count("<tr>") == len(indices) + 1  # + the header
    # masks that tile the image (an untrained head's masks are arbitrary): each query a vertical strip
    masks = maps["outputs"].pred_masks
    strips = torch.arange(masks.shape[-1]) * masks.shape[1] // masks.shape[-1]
    maps["outputs"].pred_masks = torch.where(strips == torch.arange(masks.shape[1])[:, None, None], 10.0, -10.0
                                             ).expand_as(masks).clone()
    with_segments = np.asarray(detections_picture(image, maps, indices, threshold, processor, model.config.id2label))
    maps["outputs"].pred_masks = None  # the same picture without the masks
    boxes_only = np.asarray(detections_picture(image, maps, indices, threshold, processor, model.config.id2label))
    assert with_segments.shape == boxes_only.shape
    assert (with_segments != boxes_only).any(-1).mean() > 0.05  # segments cover part of the picture
