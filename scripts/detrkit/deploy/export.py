"""`detrkit export MODEL --format onnx --output FILE [--opset N] [--pixel-mask] [--postprocess]`: a model as ONNX.

The graph takes `pixel_values` (B, 3, H, W), optionally `pixel_mask` (B, H, W) (1 on image pixels, 0 on padding),
with batch, height and width dynamic, and returns `logits` and `pred_boxes` as the PyTorch model does. With
`--postprocess` it also takes `target_sizes` (B, 2) as (height, width) and returns `scores`, `labels` and `boxes`
(x0, y0, x1, y1 in pixels of target_sizes), as the image processor's `post_process_object_detection` computes them
before its threshold: each query's best class for DETR (softmax, "no object" dropped), the top-k (query, class)
pairs for Deformable DETR (sigmoid). Thresholding is left to the caller, so the output shapes stay fixed.
Segmentation models (DetrForSegmentation, DeformableDetrForSegmentation) add `pred_masks` (B, Q, H/4, W/4) mask
logits, and with `--postprocess` `masks` (B, K, H, W): each detection's mask probability at the input's (padded)
size, to be cropped to the image and resized to its original size by the caller (as `target_sizes` does for boxes).
ACT's encoder (encoder_attention_type "act") exports too: its clusters are the distinct rows of the hash codes (ONNX
Unique), so the number of clusters, and the prototype buffer sized by it, is computed per image in the graph.

Exporter: torch.onnx's TorchScript-trace path (`dynamo=False`). torch.export (the default, dynamo) turns the
feature-map sizes into symbols and then specialises them where they reach `torch.linspace` and `torch.as_tensor`
(Deformable DETR's reference points and level shapes): the export then fails for dynamic height and width. The
trace records those sizes as graph values. Deformable attention is exported through its PyTorch path
(`grid_sample`, ONNX opset >= 16): a standard op every ONNX runtime has, where the compiled kernel would need a
custom-op library next to the file, so the file runs anywhere. The price is speed: grid_sample is slower than
the kernel (scripts/benchmarks/benchmark_onnx.py --op; figures in docs/export.md). `--msda-op detrkit` writes it as
one custom node instead, which onnxruntime runs with detrkit's kernel through onnxruntime-extensions: faster, but
the file then needs Python with detrkit and onnxruntime-extensions to run (`detrkit.deploy.onnx_session` loads it;
see onnx_custom_ops.py).
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert

from detrkit.families import DEFORMABLE_DETR, family_of

MIN_OPSET = 16  # GridSample (Deformable DETR's bilinear sampling)
MSDA_OPS = ("grid_sample", "detrkit")  # portable standard-op graph / custom node run by detrkit's kernel


class DetectionPostProcess(nn.Module):
    """The processor's `post_process_object_detection` before thresholding, as graph operations."""

    def __init__(self, sigmoid: bool, top_k: int = 100):
        super().__init__()
        self.sigmoid, self.top_k = sigmoid, top_k

    def forward(self, logits, pred_boxes, target_sizes):
        """logits (B, Q, C), pred_boxes (B, Q, 4) normalized cxcywh, target_sizes (B, 2) (height, width) ->
        scores (B, K), labels (B, K) int64, boxes (B, K, 4) pixels; K = Q for softmax, min(top_k, Q * C) else."""
        return self.select(logits, pred_boxes, target_sizes)[:3]

    def select(self, logits, pred_boxes, target_sizes):
        """forward's outputs plus the query (B, K) each detection comes from."""
        height, width = target_sizes.to(pred_boxes.dtype).unbind(1)
        scale = torch.stack([width, height, width, height], 1)[:, None]
        boxes = box_convert(pred_boxes, "cxcywh", "xyxy") * scale
        if not self.sigmoid:
            scores, labels = logits.softmax(-1)[..., :-1].max(-1)
            query = torch.arange(logits.shape[1], device=logits.device).expand(len(logits), -1)
            return scores, labels, boxes, query
        num_classes = logits.shape[-1]
        prob = logits.sigmoid().flatten(1)  # (B, Q * C)
        scores, index = prob.topk(min(self.top_k, prob.shape[1]), dim=1)
        query = torch.div(index, num_classes, rounding_mode="floor")
        boxes = boxes.gather(1, query[..., None].expand(-1, -1, 4))
        return scores, index % num_classes, boxes, query


def detection_masks(pred_masks, queries, size):
    """pred_masks (B, Q, h, w) logits, queries (B, K) -> (B, K, H, W) probabilities at the input size `size`."""
    picked = pred_masks.gather(1, queries[..., None, None].expand(-1, -1, *pred_masks.shape[-2:]))
    return F.interpolate(picked, size=size, mode="bilinear", align_corners=False).sigmoid()


class OnnxDetector(nn.Module):
    """The model with plain tensor inputs and outputs, in the order the ONNX graph names them."""

    def __init__(self, model, pixel_mask: bool = False, postprocess: bool = False, top_k: int = 100):
        super().__init__()
        self.model = model
        self.use_pixel_mask = pixel_mask
        self.segments = hasattr(model, "mask_head")  # DetrForSegmentation / DeformableDetrForSegmentation
        self.postprocess = DetectionPostProcess(family_of(model).sigmoid_scores, top_k) if postprocess else None

    @property
    def input_names(self) -> list[str]:
        return ["pixel_values"] + ["pixel_mask"] * self.use_pixel_mask + ["target_sizes"] * bool(self.postprocess)

    @property
    def output_names(self) -> list[str]:
        names = ["logits", "pred_boxes"] + ["pred_masks"] * self.segments
        return names + (["scores", "labels", "boxes"] + ["masks"] * self.segments) * bool(self.postprocess)

    def forward(self, pixel_values, *extra):
        extra = list(extra)
        pixel_mask = extra.pop(0) if self.use_pixel_mask else None
        outputs = self.model(pixel_values, pixel_mask=pixel_mask, return_dict=True)
        result = (outputs.logits, outputs.pred_boxes) + ((outputs.pred_masks,) if self.segments else ())
        if self.postprocess is not None:
            scores, labels, boxes, queries = self.postprocess.select(outputs.logits, outputs.pred_boxes, extra.pop(0))
            result += (scores, labels, boxes)
            if self.segments:
                result += (detection_masks(outputs.pred_masks, queries, pixel_values.shape[-2:]),)
        return result

    def example_inputs(self, batch_size: int = 2, height: int = 256, width: int = 320) -> tuple[torch.Tensor, ...]:
        device = next(self.model.parameters()).device  # --device: trace where the model is
        pixel_values = torch.randn(batch_size, self.model.config.num_channels, height, width, device=device)
        inputs = [pixel_values]
        if self.use_pixel_mask:
            inputs.append(torch.ones(batch_size, height, width, dtype=torch.long, device=device))
        if self.postprocess is not None:
            inputs.append(torch.tensor([[height, width]] * batch_size, dtype=torch.long, device=device))
        return tuple(inputs)


def _dynamic_axes(detector: OnnxDetector) -> dict:
    axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"}, "pixel_mask": {0: "batch", 1: "height", 2: "width"},
            "target_sizes": {0: "batch"}}
    axes.update({name: {0: "batch"} for name in detector.output_names})
    axes.update({"pred_masks": {0: "batch", 2: "mask_height", 3: "mask_width"},
                 "masks": {0: "batch", 2: "height", 3: "width"}})
    return {name: axes[name] for name in detector.input_names + detector.output_names}


def export_onnx(model, path: str | Path, opset: int = 17, pixel_mask: bool = False, postprocess: bool = False,
                top_k: int = 100, example_size: tuple[int, int] = (256, 320), check: bool = True,
                msda_op: str = "grid_sample") -> Path:
    """Write `model` (a detrkit detection model) as an ONNX file; returns its path. The graph is traced at
    `example_size` with batch 2; batch, height and width stay dynamic. `check` runs onnx.checker on the file.
    `msda_op`: "grid_sample" (standard ops, any runtime) or "detrkit" (Deformable DETR only: one custom node per
    deformable attention, see onnx_custom_ops.py)."""
    import onnx

    from .onnx_custom_ops import OPSET, custom_msda_export, uses_custom_op

    if msda_op not in MSDA_OPS:
        raise ValueError(f"msda_op must be one of {MSDA_OPS}, got {msda_op!r}")
    if msda_op == "detrkit" and family_of(model) is not DEFORMABLE_DETR:
        raise ValueError(f"msda_op='detrkit' replaces Deformable DETR's deformable attention; {type(model).__name__} "
                         "has none (export it with the default msda_op)")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: Deformable DETR's sampling needs GridSample (opset >= {MIN_OPSET})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    detector = OnnxDetector(model.eval(), pixel_mask, postprocess, top_k).eval()
    custom = msda_op == "detrkit"
    with torch.no_grad(), warnings.catch_warnings(), custom_msda_export(detector) if custom \
            else contextlib.nullcontext():
        # the trace warns at every Python-side size computation; the tests compare other sizes against PyTorch
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            detector, detector.example_inputs(2, *example_size), str(path), dynamo=False, opset_version=opset,
            input_names=detector.input_names, output_names=detector.output_names,
            dynamic_axes=_dynamic_axes(detector), do_constant_folding=True, custom_opsets=OPSET if custom else None,
        )
    if custom and not uses_custom_op(path):
        path.unlink()  # not the file that was asked for: leave none rather than a portable one under this name
        raise ValueError(f"--msda-op detrkit: no deformable attention of {type(model).__name__} reached the custom "
                         "node (its code is not detrkit's modeling package, e.g. remote code); export it without "
                         "--msda-op")
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    return path
