"""Segmentation post-processing against transformers' DetrImageProcessor on the same fake model outputs: panoptic
(thresholds, fusing on/off, target sizes), instance (incl. RLE) and semantic maps must be equal."""

from types import SimpleNamespace

import pytest
import torch
import transformers

from detrkit.processing import DeformableDetrImageProcessor, DetrImageProcessor
from detrkit.processing.segmentation_postprocessing import SegmentationPostProcessingError

NUM_CLASSES = 6
STUFF = {3, 4, 5}


def fake_outputs(seed, batch_size=2, num_queries=20, mask_size=(16, 20), blobs=True, confident=True):
    """Class logits (B, Q, C + 1) and mask logits (B, Q, h, w). Blob masks (a disc per query, some overlapping)
    give segments that survive the overlap test; noise masks mostly do not."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch_size, num_queries, NUM_CLASSES + 1, generator=g)
    if confident:  # most queries with a clear class (incl. "no object"), so thresholds keep a varied number
        best = torch.randint(0, NUM_CLASSES + 1, (batch_size, num_queries), generator=g)
        logits.scatter_add_(2, best[..., None], 2 + 4 * torch.rand(batch_size, num_queries, 1, generator=g))
    h, w = mask_size
    if blobs:
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        centre = torch.rand(batch_size, num_queries, 2, 1, 1, generator=g) * torch.tensor([h, w]).view(2, 1, 1)
        radius = 2 + 6 * torch.rand(batch_size, num_queries, 1, 1, generator=g)
        distance = ((yy - centre[:, :, 0]) ** 2 + (xx - centre[:, :, 1]) ** 2).sqrt()
        masks = 3 * (radius - distance) / radius + 0.5 * torch.randn(batch_size, num_queries, h, w, generator=g)
    else:
        masks = 2 * torch.randn(batch_size, num_queries, h, w, generator=g)
    return SimpleNamespace(logits=logits, pred_masks=masks)


def has_id_collision(segments):
    """transformers' fused-id bug: one id given to segments of different classes, or twice to unfused ones."""
    seen = {}
    for segment in segments:
        if segment["id"] in seen:
            previous = seen[segment["id"]]
            if previous["label_id"] != segment["label_id"] or not segment["was_fused"]:
                return True
        seen[segment["id"]] = segment
    return False


def assert_same_results(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a["segments_info"] == b["segments_info"]
        if isinstance(b["segmentation"], list):
            assert a["segmentation"] == [[int(v) for v in rle] for rle in b["segmentation"]]
        else:
            assert a["segmentation"].dtype == b["segmentation"].dtype
            assert torch.equal(a["segmentation"], b["segmentation"])


def as_lists(kwargs):
    sizes = kwargs["target_sizes"]
    return dict(kwargs, target_sizes=sizes.tolist() if isinstance(sizes, torch.Tensor) else sizes)


TARGETS = [None, [(40, 50), (33, 47)], torch.tensor([[31, 64], [31, 64]])]


@pytest.mark.parametrize("target_sizes", TARGETS, ids=["no-resize", "list", "tensor"])
@pytest.mark.parametrize("fuse", [False, True], ids=["no-fuse", "fuse"])
def test_panoptic_equals_transformers(target_sizes, fuse):
    ours, theirs = DetrImageProcessor(), transformers.DetrImageProcessor()
    compared = segments = 0
    for seed in range(6):
        for blobs in (True, False):
            outputs = fake_outputs(seed, blobs=blobs)
            for threshold, mask_threshold, overlap in ((0.5, 0.5, 0.8), (0.3, 0.4, 0.5), (0.85, 0.6, 0.2)):
                kwargs = dict(threshold=threshold, mask_threshold=mask_threshold,
                              overlap_mask_area_threshold=overlap, label_ids_to_fuse=STUFF if fuse else set(),
                              target_sizes=target_sizes)
                # transformers' panoptic path takes lists only
                expected = theirs.post_process_panoptic_segmentation(outputs, **as_lists(kwargs))
                if any(has_id_collision(r["segments_info"]) for r in expected):
                    continue  # transformers' own bug; test_fused_ids_never_collide covers our side
                assert_same_results(ours.post_process_panoptic_segmentation(outputs, **kwargs), expected)
                compared += 1
                segments += sum(len(r["segments_info"]) for r in expected)
    # The comparison must have been about something: many cases, many segments, some fused.
    assert compared >= 20 and segments >= 100


def test_some_fused_cases_compared():
    outputs = fake_outputs(0)
    kwargs = dict(threshold=0.3, label_ids_to_fuse=STUFF, target_sizes=[(40, 50)] * 2)
    expected = transformers.DetrImageProcessor().post_process_panoptic_segmentation(outputs, **kwargs)
    assert not any(has_id_collision(r["segments_info"]) for r in expected)
    fused = [[s["id"] for s in r["segments_info"] if s["was_fused"]] for r in expected]
    assert any(len(ids) > len(set(ids)) for ids in fused)  # some ids really shared by several queries
    assert_same_results(DetrImageProcessor().post_process_panoptic_segmentation(outputs, **kwargs), expected)


def test_fused_ids_never_collide():
    """Query order: stuff class 3, thing, stuff class 3 again, thing. transformers gives the last thing the id of
    the first thing (its counter restarts from the fused id); ours gives it a new one."""
    logits = torch.full((1, 4, NUM_CLASSES + 1), -10.0)
    for query, label in enumerate((3, 0, 3, 1)):
        logits[0, query, label] = 10.0
    masks = torch.full((1, 4, 8, 8), -10.0)
    for query, (rows, cols) in enumerate(((slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)),
                                          (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8)))):
        masks[0, query, rows, cols] = 10.0
    outputs = SimpleNamespace(logits=logits, pred_masks=masks)
    ours = DetrImageProcessor().post_process_panoptic_segmentation(outputs, label_ids_to_fuse={3})[0]
    theirs = transformers.DetrImageProcessor().post_process_panoptic_segmentation(outputs, label_ids_to_fuse={3})[0]
    assert [s["id"] for s in theirs["segments_info"]] == [1, 2, 1, 2]  # the bug: two things share id 2
    assert [s["id"] for s in ours["segments_info"]] == [1, 2, 1, 3]
    assert torch.equal(ours["segmentation"], torch.tensor([[1, 2], [1, 3]], dtype=torch.int32)
                       .repeat_interleave(4, 0).repeat_interleave(4, 1))


@pytest.mark.parametrize("return_coco_annotation", [False, True], ids=["map", "rle"])
def test_instance_equals_transformers(return_coco_annotation):
    ours, theirs = DetrImageProcessor(), transformers.DetrImageProcessor()
    segments = 0
    for seed in range(4):
        outputs = fake_outputs(seed + 10)
        for threshold, target_sizes in ((0.5, None), (0.3, [(40, 50), (33, 47)]), (0.99, None)):
            kwargs = dict(threshold=threshold, target_sizes=target_sizes,
                          return_coco_annotation=return_coco_annotation)
            expected = theirs.post_process_instance_segmentation(outputs, **kwargs)
            assert_same_results(ours.post_process_instance_segmentation(outputs, **kwargs), expected)
            segments += sum(len(r["segments_info"]) for r in expected)
    assert segments >= 30


@pytest.mark.parametrize("target_sizes", TARGETS, ids=["no-resize", "list", "tensor"])
def test_semantic_equals_transformers(target_sizes):
    ours, theirs = DetrImageProcessor(), transformers.DetrImageProcessor()
    outputs = fake_outputs(3)
    sizes = target_sizes.tolist() if isinstance(target_sizes, torch.Tensor) else target_sizes
    expected = theirs.post_process_semantic_segmentation(outputs, target_sizes=sizes, return_segmentation_scores=True)
    result = ours.post_process_semantic_segmentation(outputs, target_sizes=target_sizes,
                                                     return_segmentation_scores=True)
    for a, b in zip(result, expected):
        assert torch.equal(a.segmentation, b.segmentation)
        assert torch.equal(a.segmentation_scores, b.segmentation_scores)
    maps = ours.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    assert all(torch.equal(a, b.segmentation) for a, b in zip(maps, expected))
    assert len(torch.unique(torch.cat([m.view(-1) for m in maps]))) > 2


def test_deformable_scores_are_sigmoids():
    """No "no object" class: a query is kept when its best per-class sigmoid exceeds the threshold."""
    logits = torch.full((1, 3, 2), -5.0)
    logits[0, 0, 1] = 2.0  # sigmoid 0.88: kept
    logits[0, 1, 0] = 0.0  # sigmoid 0.5: not above 0.5
    logits[0, 2, 0] = 1.0  # sigmoid 0.73: kept, but its weighted mask lies under query 0's
    masks = torch.full((1, 3, 4, 4), -8.0)
    masks[0, 0, :, :2] = 8.0
    masks[0, 1, :, 2:] = 8.0
    masks[0, 2, :, :2] = 4.0
    outputs = {"logits": logits, "pred_masks": masks}
    result = DeformableDetrImageProcessor().post_process_panoptic_segmentation(outputs)[0]
    assert [(s["id"], s["label_id"]) for s in result["segments_info"]] == [(1, 1)]
    assert result["segments_info"][0]["score"] == round(torch.sigmoid(torch.tensor(2.0)).item(), 6)
    # Every pixel goes to its best kept query, even where all masks are near 0 (transformers' rule too).
    assert torch.equal(result["segmentation"], torch.ones(4, 4, dtype=torch.int32))
    semantic = DeformableDetrImageProcessor().post_process_semantic_segmentation(outputs)[0]
    # left: class 1 by 0.88 against class 0's 0.73 * 0.98; right: only query 1 (class 0) has a mask
    assert torch.equal(semantic, torch.tensor([[1, 1, 0, 0]]).expand(4, 4))


def test_bad_outputs_and_sizes_are_named():
    processor = DetrImageProcessor()
    outputs = fake_outputs(0)
    with pytest.raises(SegmentationPostProcessingError, match="pred_masks"):
        processor.post_process_panoptic_segmentation({"logits": outputs.logits, "pred_boxes": None})
    with pytest.raises(SegmentationPostProcessingError, match="got 1 target sizes for a batch of 2"):
        processor.post_process_panoptic_segmentation(outputs, target_sizes=[(10, 10)])
    with pytest.raises(SegmentationPostProcessingError, match="target size 1"):
        processor.post_process_instance_segmentation(outputs, target_sizes=[(10, 10), (0, 10)])
    with pytest.raises(SegmentationPostProcessingError, match=r"logits \(B, Q, C\)"):
        processor.post_process_semantic_segmentation(SimpleNamespace(logits=outputs.logits[0],
                                                                     pred_masks=outputs.pred_masks))
