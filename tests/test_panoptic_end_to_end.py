"""The panoptic path end to end on a tiny random DetrForSegmentation: built-in panoptic files -> loader ->
processor labels with masks -> collator -> mask losses; model outputs -> post-processing (equal to transformers'
on these real outputs) -> PQ against the ground-truth PNGs."""

import numpy as np
import torch
import transformers
from helpers import SMALL
from PIL import Image

import detrkit.modeling as modeling
from detrkit.data.builtin.panoptic_shapes import write_builtin_panoptic_dataset
from detrkit.data.coco_panoptic import load_coco_panoptic
from detrkit.data.collator import DetectionCollator
from detrkit.data.panoptic_dataset import PanopticDataset
from detrkit.metrics.panoptic import PanopticQuality, panoptic_prediction
from detrkit.processing import DetrImageProcessor
from detrkit.processing.segmentation_annotations import rgb_to_id


def test_panoptic_files_to_loss_to_pq(tmp_path):
    written = write_builtin_panoptic_dataset("shapes-b-panoptic", tmp_path, num_train=2, num_val=2, image_size=64)
    data = load_coco_panoptic(written.root, "val")
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64})
    dataset = PanopticDataset(data, processor)
    batch = DetectionCollator(processor)([dataset[0], dataset[1]])

    torch.manual_seed(0)
    config = modeling.DetrConfig(**dict(SMALL, encoder_attention_heads=8, decoder_attention_heads=8,
                                        num_labels=len(data.categories)))
    model = modeling.DetrForSegmentation(config)
    labels = [dict(t, masks=t["masks"].float()) for t in batch["labels"]]
    outputs = model(batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=labels)
    assert torch.isfinite(outputs.loss) and {"loss_mask", "loss_dice"} <= set(outputs.loss_dict)
    outputs.loss.backward()

    sizes = [tuple(t["orig_size"].tolist()) for t in batch["labels"]]
    segments = 0
    # Random weights: low class scores (about 1 / classes) and flat masks, so low thresholds.
    for threshold, mask_threshold, overlap in ((0.0, 0.05, 0.0), (0.1, 0.05, 0.5), (0.0, 0.5, 0.8)):
        kwargs = dict(threshold=threshold, mask_threshold=mask_threshold, overlap_mask_area_threshold=overlap,
                      label_ids_to_fuse=set(), target_sizes=sizes)
        ours = processor.post_process_panoptic_segmentation(outputs, **kwargs)
        theirs = transformers.DetrImageProcessor().post_process_panoptic_segmentation(outputs, **kwargs)
        for a, b in zip(ours, theirs):
            assert a["segments_info"] == b["segments_info"] and torch.equal(a["segmentation"], b["segmentation"])
            segments += len(a["segments_info"])
    assert segments > 0

    results = processor.post_process_panoptic_segmentation(outputs, threshold=0.0, mask_threshold=0.05,
                                                           overlap_mask_area_threshold=0.0,
                                                           label_ids_to_fuse=data.stuff_label_ids, target_sizes=sizes)
    metric = PanopticQuality(data.categories)
    for record, result in zip(data.records, results):
        ids, segments = panoptic_prediction(result, data.label2category)
        gt = rgb_to_id(np.asarray(Image.open(record.panoptic_png)))
        metric.update(gt, record.segments_info, ids, segments, image_id=record.image_id)
    pq = metric.compute()
    assert 0.0 <= pq["All"]["pq"] < 0.5 and pq["All"]["n"] > 0  # an untrained model: computed, and poor
