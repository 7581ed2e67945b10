"""What a detector attends to: `detrkit visualize MODEL IMAGE [--output PNG]` and `attention_maps(...)`.

DETR (paper figures 3 and 6): for each detection, the last decoder layer's cross-attention over the encoder's
feature map (per head and the heads' mean), and the encoder self-attention of chosen pixels; both read from the
model's own `output_attentions`. Deformable DETR (paper figure 5 and appendix): for each detection, the sampling
points of the last decoder layer, and for chosen pixels those of the last encoder layer, per level, with their
attention weights; recorded from the arguments each deformable attention module hands to its sampling op, so the
points drawn are the ones the model sampled.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

from detrkit.families import DEFORMABLE_DETR, family_of

from .export import DetectionPostProcess


def detections(model, outputs, image_size: tuple[int, int], threshold: float, top_k: int = 100) -> dict:
    """The processor's detections for one image (same scores, labels, boxes), plus the query each one comes from."""
    select = DetectionPostProcess(family_of(model).sigmoid_scores, top_k).select
    scores, labels, boxes, queries = (t[0] for t in select(outputs.logits, outputs.pred_boxes,
                                                           torch.tensor([image_size])))
    keep = scores > threshold
    return {"scores": scores[keep], "labels": labels[keep], "boxes": boxes[keep], "queries": queries[keep]}


# ------------------------------------------------------------------------------------------------------- DETR
def _feature_size(num_pixels: int, height: int, width: int) -> tuple[int, int]:
    """(h, w) of the encoder's feature map from its pixel count: the backbone's stride is 32 (16 with DC5)."""
    for stride in (32, 16, 8):
        h, w = math.ceil(height / stride), math.ceil(width / stride)
        if h * w == num_pixels:
            return h, w
    raise ValueError(f"cannot tell the feature map of {num_pixels} pixels for a {height}x{width} input")


def _detr_maps(model, inputs, outputs, found, pixels) -> dict:
    height, width = inputs["pixel_values"].shape[-2:]
    cross = outputs.cross_attentions[-1][0]  # (heads, Q, hw)
    h, w = _feature_size(cross.shape[-1], height, width)
    per_head = cross[:, found["queries"]].transpose(0, 1).unflatten(-1, (h, w))  # (N, heads, h, w)
    encoder = outputs.encoder_attentions[-1][0].mean(0)  # (hw, hw), heads averaged as in the paper's figure
    rows = [min(int(y / height * h), h - 1) * w + min(int(x / width * w), w - 1) for x, y in pixels]
    return {
        "decoder_attention": per_head.numpy(),
        "decoder_attention_mean": per_head.mean(1).numpy(),
        "encoder_attention": encoder[rows].unflatten(-1, (h, w)).numpy(),
        "feature_size": (h, w),
    }


# -------------------------------------------------------------------------------------------- Deformable DETR
@contextmanager
def record_sampling(model):
    """Within the block, every deformable attention call appends {"module", "sampling_locations" (B, Q, heads,
    L, P, 2) normalized (x, y), "attention_weights" (B, Q, heads, L, P), "spatial_shapes"} to the yielded list:
    the arguments the module passes to its sampling op (through its documented `sampling_function` seam), which
    then samples as it would have (through an override already in place, if any, which comes back afterwards)."""
    from detrkit.modeling.seams import override_seam

    records = []

    def recorder(name, module, previous):
        sample = previous or module.default_sampling

        def record(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
            records.append({"module": name, "sampling_locations": sampling_locations.detach().cpu(),
                            "attention_weights": attention_weights.detach().cpu(),
                            "spatial_shapes": [tuple(int(v) for v in s) for s in spatial_shapes]})
            return sample(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return record

    with override_seam(model, "sampling_function", function_of=recorder):
        yield records


def _last(records, part: str) -> dict:
    matching = [r for r in records if f"{part}.layers." in r["module"]]
    if not matching:
        raise RuntimeError(f"no deformable attention call recorded in the {part}")
    return matching[-1]


def _deformable_maps(records, inputs, found, pixels) -> dict:
    height, width = inputs["pixel_values"].shape[-2:]
    decoder, encoder = _last(records, "decoder"), _last(records, "encoder")
    shapes = encoder["spatial_shapes"]
    # encoder queries are the pixels of every level, flattened: pick each chosen pixel on the first level
    h0, w0 = shapes[0]
    rows = [min(int(y / height * h0), h0 - 1) * w0 + min(int(x / width * w0), w0 - 1) for x, y in pixels]
    scale = np.array([width, height], dtype=np.float32)  # normalized (x, y) -> input pixels
    queries = found["queries"]
    return {
        "decoder_points": decoder["sampling_locations"][0, queries].numpy() * scale,  # (N, heads, L, P, 2)
        "decoder_weights": decoder["attention_weights"][0, queries].numpy(),  # (N, heads, L, P)
        "encoder_points": encoder["sampling_locations"][0, rows].numpy() * scale,
        "encoder_weights": encoder["attention_weights"][0, rows].numpy(),
        "spatial_shapes": shapes,
    }


# ---------------------------------------------------------------------------------------------------- the API
@torch.no_grad()
def attention_maps(model, processor, image: Image.Image, threshold: float = 0.5, pixels=None,
                   return_outputs: bool = False) -> dict:
    """Detections of one image and what they attend to, as arrays in the coordinates of the processed input.

    Returns {"detections": {"scores", "labels", "boxes" (x0, y0, x1, y1 pixels of `image`), "queries"},
    "input_size": (H, W) of the processed input, "pixels": the chosen (x, y) input pixels (default: the centres
    of the first three detections; "detections": of every one), and per model:
      DETR: "decoder_attention" (N, heads, h, w), "decoder_attention_mean" (N, h, w), "encoder_attention"
        (len(pixels), h, w) (heads averaged), "feature_size" (h, w);
      Deformable DETR: "decoder_points" (N, heads, L, P, 2) (x, y) input pixels, "decoder_weights"
        (N, heads, L, P), "encoder_points", "encoder_weights" (same, for the pixels), "spatial_shapes"};
    and with `return_outputs` the model's "outputs" (for its masks, when it segments).
    """
    model.eval()
    image = image.convert("RGB")
    inputs = processor(images=[image], return_tensors="pt")
    height, width = inputs["pixel_values"].shape[-2:]
    deformable = family_of(model) is DEFORMABLE_DETR
    with record_sampling(model) if deformable else _nothing() as records:
        device = next(model.parameters()).device  # --device: the model's; the maps are drawn from CPU copies
        outputs = on_cpu(model(**{k: v.to(device) for k, v in inputs.items()}, output_attentions=True,
                               return_dict=True))
    found = detections(model, outputs, (image.height, image.width), threshold)
    if pixels is None or pixels == "detections":  # centres of the first three (or all) detections, input pixels
        boxes = found["boxes"] if pixels == "detections" else found["boxes"][:3]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        pixels = [(float(x) * width / image.width, float(y) * height / image.height) for x, y in centres]
        pixels = pixels or [(width / 2, height / 2)]
    result = {"detections": {k: v.numpy() for k, v in found.items()}, "input_size": (height, width),
              "pixels": [tuple(p) for p in pixels]}
    if deformable:
        result.update(_deformable_maps(records, inputs, found, pixels))
    else:
        result.update(_detr_maps(model, inputs, outputs, found, pixels))
    if return_outputs:
        result["outputs"] = outputs
    return result


def on_cpu(value):
    """The model's outputs (tensors in ModelOutputs, tuples and lists) as CPU tensors, for numpy and drawing."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (tuple, list)):
        return type(value)(on_cpu(v) for v in value)
    if isinstance(value, dict):  # a ModelOutput keeps its type and attributes
        for key in list(value.keys()):
            value[key] = on_cpu(value[key])
    return value


@contextmanager
def _nothing():
    yield None


def one_detection(maps: dict, index: int) -> dict:
    """`maps` (made with pixels="detections") cut down to detection `index` and the encoder at its centre."""
    per_detection = ("decoder_attention", "decoder_attention_mean", "decoder_points", "decoder_weights")
    per_pixel = ("encoder_attention", "encoder_points", "encoder_weights")
    picked = {**maps, "detections": {k: v[index:index + 1] for k, v in maps["detections"].items()},
              "pixels": maps["pixels"][index:index + 1]}
    picked.update({k: maps[k][index:index + 1] for k in per_detection + per_pixel if k in maps})
    return picked


# ------------------------------------------------------------------------------------------------- drawing
def draw(image: Image.Image, maps: dict, id2label: dict, max_detections: int = 4):
    """A matplotlib figure: one column per detection (its box; DETR: mean cross-attention heat map; Deformable
    DETR: its sampling points, one marker per level, coloured by attention weight) and a row of the encoder's
    attention at the chosen pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = maps["input_size"]
    shown = image.convert("RGB").resize((width, height))
    found = maps["detections"]
    count = min(len(found["scores"]), max_detections)
    columns = max(count, len(maps["pixels"]), 1)
    figure, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.4), squeeze=False)
    for ax in axes.flat:
        ax.imshow(shown)
        ax.set_xlim(0, width)  # far sampling points must not zoom the picture out
        ax.set_ylim(height, 0)
        ax.axis("off")
    for ax in [*axes[0, count:], *axes[1, len(maps["pixels"]):]]:
        ax.set_visible(False)
    deformable = "decoder_points" in maps
    for i in range(count):
        ax = axes[0, i]
        x0, y0, x1, y1 = found["boxes"][i] * np.array([width / image.width, height / image.height] * 2)
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", linewidth=1.5))
        ax.set_title(f"{id2label.get(int(found['labels'][i]), found['labels'][i])} {found['scores'][i]:.2f}", fontsize=9)
        if deformable:
            _points(ax, maps["decoder_points"][i], maps["decoder_weights"][i])
        else:
            ax.imshow(maps["decoder_attention_mean"][i], cmap="inferno", alpha=0.6, extent=(0, width, height, 0))
    for j, (x, y) in enumerate(maps["pixels"]):
        ax = axes[1, j]
        ax.set_title("encoder, pixel (%d, %d)" % (x, y), fontsize=9)
        if deformable:
            _points(ax, maps["encoder_points"][j], maps["encoder_weights"][j])
        else:
            ax.imshow(maps["encoder_attention"][j], cmap="inferno", alpha=0.6, extent=(0, width, height, 0))
        ax.plot([x], [y], marker="+", color="cyan", markersize=12, mew=2)
    figure.tight_layout()
    return figure


def _points(ax, points, weights):
    """points (heads, L, P, 2), weights (heads, L, P): one marker per level, colour = weight."""
    from matplotlib.colors import PowerNorm

    markers = "os^D*v<>"
    norm = PowerNorm(0.5, vmin=0, vmax=float(weights.max()))  # a few points carry most weight: show the rest too
    for level in range(points.shape[1]):
        ax.scatter(points[:, level, :, 0].ravel(), points[:, level, :, 1].ravel(), c=weights[:, level].ravel(),
                   cmap="plasma", norm=norm, s=14, marker=markers[level % len(markers)], linewidths=0.3,
                   edgecolors="white")
