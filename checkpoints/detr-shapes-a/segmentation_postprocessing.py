"""Segmentation model outputs (class logits + per-query mask logits) -> panoptic, instance and semantic maps.

The rules are transformers' DetrImageProcessor's (themselves from the DETR authors' PostProcessPanoptic), so that
the outputs are the same on the same model outputs:

- a query is kept when its best class is not "no object" and its score exceeds `threshold`;
- kept queries' mask probabilities are resized (bilinear) to the target size and weighted by the query's score;
  each pixel goes to the query with the highest weighted probability;
- a query becomes a segment when it wins some pixels and its won area exceeds `overlap_mask_area_threshold`
  times its own area (weighted probability >= `mask_threshold`): a query mostly hidden by others is dropped;
- queries of a class in `label_ids_to_fuse` (stuff) share one segment id per class.

What differs is the cost: one argmax over the kept queries, areas by bincount, segment ids mapped onto the
pixel map with one index op, instead of a Python loop that scans the whole map once per query. On CPU, when
detrkit's kernels are installed and build, the upsampling, argmax and areas are one fused pass that never holds
the (K, H, W) upsampled tensor (detrkit.kernels.panoptic_merge, bit-equal to the PyTorch steps here, which stay
as the fallback; this file must also run without detrkit, as Hub remote code). One deliberate
difference: transformers re-uses a fused class's id as its running counter, so a new segment after a fused one
can get an id already given to another segment (two objects merged into one); here ids always increase.

Deformable DETR has no "no object" class: its scores are per-class sigmoids (`sigmoid_scores=True`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:  # optional: Hub remote code copies this file without detrkit
    from detrkit.kernels.panoptic_merge import PanopticMergeError, panoptic_merge
except ImportError:
    panoptic_merge = None


class SegmentationPostProcessingError(ValueError):
    """Model outputs or arguments that post-processing cannot use; the message names the problem."""


def class_and_mask_outputs(outputs) -> tuple[torch.Tensor, torch.Tensor]:
    """`logits` (B, Q, C) and `pred_masks` (B, Q, h, w) from a ModelOutput or dict, shapes checked, detached."""
    get = outputs.get if isinstance(outputs, dict) else lambda name: getattr(outputs, name, None)
    logits, masks = get("logits"), get("pred_masks")
    if masks is None:
        raise SegmentationPostProcessingError(
            "outputs have no 'pred_masks': segmentation post-processing needs a segmentation model's outputs "
            "(DetrForSegmentation / DeformableDetrForSegmentation), not a detector's"
        )
    if logits.ndim != 3 or masks.ndim != 4 or logits.shape[:2] != masks.shape[:2]:
        raise SegmentationPostProcessingError(
            f"expected logits (B, Q, C) and pred_masks (B, Q, h, w) with the same B and Q, got "
            f"{tuple(logits.shape)} and {tuple(masks.shape)}"
        )
    return logits.detach(), masks.detach()  # post-processing is never differentiated (and writes into buffers)


def target_size_list(target_sizes, batch_size: int) -> list[tuple[int, int] | None]:
    """One (height, width) of ints per image, or None per image when no resize is asked for."""
    if target_sizes is None:
        return [None] * batch_size
    sizes = target_sizes.tolist() if isinstance(target_sizes, torch.Tensor) else list(target_sizes)
    if len(sizes) != batch_size:
        raise SegmentationPostProcessingError(
            f"got {len(sizes)} target sizes for a batch of {batch_size}; give one (height, width) per image"
        )
    result = []
    for index, size in enumerate(sizes):
        if len(size) != 2 or any(int(v) != v or v <= 0 for v in size):
            raise SegmentationPostProcessingError(
                f"target size {index} must be (height, width) of positive integers, got {size!r}"
            )
        result.append((int(size[0]), int(size[1])))
    return result


def query_scores(logits: torch.Tensor, sigmoid_scores: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each query's score and class (B, Q), and whether its class is an object (not DETR's "no object")."""
    if sigmoid_scores:
        scores, labels = logits.sigmoid().max(-1)
        return scores, labels, torch.ones_like(labels, dtype=torch.bool)
    scores, labels = logits.softmax(-1).max(-1)
    return scores, labels, labels != logits.shape[-1] - 1


def segment_ids(valid_labels: list[int], label_ids_to_fuse) -> list[int]:
    """Segment id (1, 2, ...) for each valid query in order; queries of a fused class share their class's id."""
    ids, fused, next_id = [], {}, 0
    for label in valid_labels:
        if label in fused:
            ids.append(fused[label])
            continue
        next_id += 1
        ids.append(next_id)
        if label in label_ids_to_fuse:
            fused[label] = next_id
    return ids


class Workspace:
    """The large per-image buffers of one call, reused from image to image: a fresh (K, H, W) tensor costs more in
    page faults (the allocator hands such sizes back to the system when freed) than the op that fills it."""

    def __init__(self):
        self.buffers = {}

    def get(self, name: str, shape, dtype, device) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            buffer = self.buffers[name] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)


def upsample(mask_probs: torch.Tensor, size: tuple[int, int], workspace: Workspace | None) -> torch.Tensor:
    """(K, h, w) -> (K, H, W) bilinear, align_corners=False: F.interpolate's values, on CPU into a reused buffer
    (the same ATen kernel as F.interpolate, with `out`)."""
    if workspace is None or mask_probs.device.type != "cpu":
        return F.interpolate(mask_probs[None], size=size, mode="bilinear", align_corners=False)[0]
    out = workspace.get("upsampled", (1, len(mask_probs), *size), mask_probs.dtype, mask_probs.device)
    torch.ops.aten.upsample_bilinear2d.out(mask_probs[None], list(size), False, None, None, out=out)
    return out[0]


def compute_segments(mask_probs, scores, labels, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse,
                     target_size, workspace: Workspace | None = None):
    """One image's kept queries -> (segmentation (H, W) int32 of segment ids, 0 = none; segments_info).

    mask_probs (K, h, w) sigmoid probabilities (overwritten when not resized), scores and labels (K,), K >= 1.
    """
    num_queries = len(mask_probs)
    merged = None
    if panoptic_merge is not None:
        try:
            merged = panoptic_merge(mask_probs, scores, target_size, mask_threshold)
        except PanopticMergeError as error:
            raise SegmentationPostProcessingError(str(error)) from None
    winner, won_area, own_area = merged or merge_queries(mask_probs, scores, mask_threshold, target_size, workspace)
    # The ratio as float32, compared in float64, as transformers' `.item() > threshold` does: 4 / 5 must pass 0.8.
    ratio = won_area / own_area.clamp(min=1)
    valid = (won_area > 0) & (own_area > 0) & (ratio.double() > overlap_mask_area_threshold)

    valid_index = valid.nonzero().view(-1)
    valid_labels = labels[valid_index].tolist()
    ids = segment_ids(valid_labels, label_ids_to_fuse)
    id_of_query = torch.zeros(num_queries, dtype=torch.int32, device=winner.device)
    id_of_query[valid_index] = torch.tensor(ids, dtype=torch.int32, device=winner.device)
    segmentation = id_of_query.index_select(0, winner.reshape(-1)).view(winner.shape)  # faster than [winner] on CPU
    segments = [
        {"id": i, "label_id": label, "was_fused": label in label_ids_to_fuse, "score": round(score, 6)}
        for i, label, score in zip(ids, valid_labels, scores[valid_index].tolist())
    ]
    return segmentation, segments


def merge_queries(mask_probs, scores, mask_threshold, target_size, workspace: Workspace | None = None):
    """(winner (H, W): the query of highest score-weighted upsampled probability per pixel, won_area (K,): its
    pixels per query, own_area (K,): per query the pixels whose weighted probability is >= mask_threshold)."""
    if target_size is not None:
        mask_probs = upsample(mask_probs, target_size, workspace)
    mask_probs *= scores.view(-1, 1, 1)
    best = mask_probs.max(0)  # (H, W); first index among ties, as argmax; faster than argmax on CPU
    if best.values.isnan().any():  # max propagates NaN, so the (H, W) maxima show any NaN of the (K, H, W) tensor
        raise SegmentationPostProcessingError("the kept queries' mask probabilities contain NaN")
    won_area = torch.bincount(best.indices.view(-1), minlength=len(mask_probs))
    return best.indices, won_area, count_at_least(mask_probs, mask_threshold, workspace)


def count_at_least(values: torch.Tensor, threshold: float, workspace: Workspace | None = None) -> torch.Tensor:
    """Per leading index, how many of values[k] are >= threshold: (K, ...) -> (K,) int64.

    Summing a bool tensor widens every flag to int64 first, several times the cost of the comparison. Here the
    flags are read 8 at a time as int64 words and summed in groups of at most 255 words, so that no byte of the
    sum can exceed 255 and carry into its neighbour; the bytes of the partial sums then add up to the count.
    """
    if workspace is None:
        flags = (values >= threshold).reshape(len(values), -1)
    else:
        flags = torch.ge(values, threshold, out=workspace.get("flags", values.shape, torch.bool, values.device))
        flags = flags.view(len(values), -1)
    if flags.shape[1] % 8 or flags.device.type != "cpu":
        return torch.count_nonzero(flags, dim=1)
    words = flags.view(torch.uint8).view(torch.int64)  # (K, N / 8), one flag per byte
    whole = words.shape[1] // 255 * 255
    partial = torch.cat([words[:, :whole].view(len(values), -1, 255).sum(-1),  # each byte <= 255
                         words[:, whole:].sum(-1, keepdim=True)], 1)
    return partial.view(torch.uint8).view(len(values), -1).sum(1)


def segment_batch(outputs, threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse, target_sizes,
                  sigmoid_scores):
    """Per image (segmentation, segments_info, whether any query was kept); a float map of -1 when none was."""
    logits, masks = class_and_mask_outputs(outputs)
    sizes = target_size_list(target_sizes, len(logits))
    scores, labels, is_object = query_scores(logits, sigmoid_scores)
    keep = is_object & (scores > threshold)
    workspace = Workspace()
    results = []
    for i, size in enumerate(sizes):
        if not keep[i].any():
            height, width = size if size is not None else masks.shape[-2:]
            results.append((torch.zeros((height, width)) - 1, [], False))
            continue
        kept = slice(None) if keep[i].all() else keep[i]  # boolean indexing copies, for nothing when all are kept
        segmentation, segments = compute_segments(
            masks[i][kept].sigmoid(), scores[i][kept], labels[i][kept], mask_threshold,
            overlap_mask_area_threshold, label_ids_to_fuse, size, workspace,
        )
        results.append((segmentation, segments, True))
    return results


def post_process_panoptic_segmentation(outputs, threshold=0.5, mask_threshold=0.5, overlap_mask_area_threshold=0.8,
                                       label_ids_to_fuse=None, target_sizes=None, sigmoid_scores=False):
    """See DetrImageProcessor.post_process_panoptic_segmentation."""
    label_ids_to_fuse = set() if label_ids_to_fuse is None else set(label_ids_to_fuse)
    results = segment_batch(outputs, threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse,
                            target_sizes, sigmoid_scores)
    return [{"segmentation": segmentation, "segments_info": segments} for segmentation, segments, _ in results]


def post_process_instance_segmentation(outputs, threshold=0.5, mask_threshold=0.5, overlap_mask_area_threshold=0.8,
                                       target_sizes=None, return_coco_annotation=False, sigmoid_scores=False):
    """See DetrImageProcessor.post_process_instance_segmentation: panoptic without fusing, optionally as RLE
    (transformers leaves the map of an image without kept queries as it is)."""
    results = segment_batch(outputs, threshold, mask_threshold, overlap_mask_area_threshold, set(), target_sizes,
                            sigmoid_scores)
    return [
        {"segmentation": segmentation_to_rle(segmentation) if return_coco_annotation and kept else segmentation,
         "segments_info": segments}
        for segmentation, segments, kept in results
    ]


def segmentation_to_rle(segmentation: torch.Tensor) -> list[list[int]]:
    """Per distinct value of the map (ascending, 0 included), the (start, length) runs of its pixels, row-major,
    1-based starts: the format transformers' `convert_segmentation_to_rle` returns."""
    flat = segmentation.reshape(-1)
    encodings = []
    for value in torch.unique(flat):
        pixels = torch.cat([flat.new_zeros(1, dtype=torch.bool), flat == value, flat.new_zeros(1, dtype=torch.bool)])
        edges = (pixels[1:] != pixels[:-1]).nonzero().view(-1) + 1
        starts, ends = edges[0::2], edges[1::2]
        encodings.append(torch.stack([starts, ends - starts], 1).view(-1).tolist())
    return encodings


def post_process_semantic_segmentation(outputs, target_sizes=None, return_segmentation_scores=False,
                                       sigmoid_scores=False):
    """See DetrImageProcessor.post_process_semantic_segmentation: per pixel, the class of highest
    sum over queries of P(class | query) * P(pixel in mask | query)."""
    from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

    logits, masks = class_and_mask_outputs(outputs)
    sizes = target_size_list(target_sizes, len(logits))
    class_probs = logits.sigmoid() if sigmoid_scores else logits.softmax(-1)[..., :-1]
    scores = torch.einsum("bqc, bqhw -> bchw", class_probs, masks.sigmoid())  # (B, C, h, w)
    if target_sizes is not None and len(set(sizes)) == 1:
        scores = F.interpolate(scores, size=sizes[0], mode="bilinear", align_corners=False)
        per_image = list(scores)
    elif target_sizes is not None:
        per_image = [
            F.interpolate(s[None], size=size, mode="bilinear", align_corners=False)[0] for s, size in zip(scores, sizes)
        ]
    else:
        per_image = list(scores)
    if not return_segmentation_scores:
        return [s.argmax(0) for s in per_image]
    return [SemanticSegmentationPostProcessorOutput(data={"segmentation": s.argmax(0), "segmentation_scores": s})
            for s in per_image]
