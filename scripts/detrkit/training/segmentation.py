"""`detrkit train --task panoptic|instance`: DETR's segmentation training (Carion et al., 2020, section 4.4).

The paper's two steps (`freeze_detector: true`, the default), one after the other in one run:

1. the detector on the data's classes, things and stuff alike (every segment is a box to detect), with the
   overrides in `detector_step` (e.g. epochs, max_train_minutes, lr); skipped when `detector_step` is empty (the
   model already detects these classes). Saved to <output_dir>/detector/.
2. the attention map and mask head on top of that detector, frozen; the head runs for the matched queries only
   (`train_matched_masks_only`), the only ones the mask losses read.

With `freeze_detector: false`, one joint run trains detector and head together (the paper's alternative).

Data: panoptic, a COCO panoptic folder or a built-in panoptic set (shapes-a-panoptic, shapes-b-panoptic);
instance, any detection layout whose objects carry a COCO `segmentation`. Masks come from the image processor
(resized with the image, padded with the batch). No augmentation: the images are resized as at evaluation.
Evaluation: PQ / SQ / RQ (panoptic, by detrkit.processing's panopticapi-equal metric against the ground-truth
PNGs; stuff classes fused) or COCO mask AP (instance) in metrics.json; panoptic.png draws each predicted
segment of a few evaluation images in its own colour, labelled, and predictions.png the same model's detections.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import TrainConfig, default_output_dir, repo_path
from .errors import UsageError
from .frozen_detector_cache import FrozenDetectorCache, collate_cached, default_max_bytes, head_loss
from .optim import build_optimizer, build_scheduler


# --------------------------------------------------------------------------------------------- data


@dataclass
class SegmentationData:
    """Both splits encoded with masks, and what evaluation needs: the ground truth per image id, the stuff labels
    (fused in panoptic post-processing) and the map from the model's labels to the data's category ids."""

    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset
    id2label: dict[int, str]
    eval_records: list
    stuff_label_ids: set[int]
    label2category: dict[int, int]
    categories: list[dict]


def load_segmentation_data(config: TrainConfig, processor, log=print) -> SegmentationData:
    """Panoptic: a COCO panoptic folder or a built-in panoptic set (shapes-a-panoptic, shapes-b-panoptic), through
    the processor's coco_panoptic path. Instance: any detection layout whose objects carry a COCO `segmentation`
    (the data layer's loaders), through the processor's `return_segmentation_masks`."""
    if config.task == "panoptic":
        from detrkit.processing import (BUILTIN_PANOPTIC_DATASETS, PanopticDataset, load_coco_panoptic,
                                        write_builtin_panoptic_dataset)

        root = Path(str(config.data)).expanduser()
        if str(config.data) in BUILTIN_PANOPTIC_DATASETS:
            sizes = {k: v for k, v in (("num_train", config.builtin_num_train),
                                        ("num_val", config.builtin_num_val)) if v}
            suffix = "".join(f"-{v}" for v in sizes.values())
            root = Path(config.data_cache).expanduser() / f"{config.data}-{config.image_size}px{suffix}"
            write_builtin_panoptic_dataset(str(config.data), root, image_size=config.image_size, **sizes)
            log(f"data: built-in {config.data} in {root}")
        elif not root.exists():
            raise UsageError(f"--task panoptic --data {config.data}: not a COCO panoptic folder or a built-in "
                             f"panoptic set ({', '.join(BUILTIN_PANOPTIC_DATASETS)})")
        train, evaluation = (load_coco_panoptic(root, split) for split in (config.train_split, config.eval_split))
        if train.categories != evaluation.categories:
            raise UsageError(f"--data {config.data}: {config.train_split} and {config.eval_split} have different "
                             "categories")
        train.records[:] = train.records[:config.max_train_samples or len(train.records)]
        evaluation.records[:] = evaluation.records[:config.max_eval_samples or len(evaluation.records)]
        log(f"data: {len(train)} train / {len(evaluation)} eval images, {len(train.categories)} classes "
            f"({len(train.stuff_label_ids)} stuff): {', '.join(train.id2label.values())}")
        return SegmentationData(PanopticDataset(train, processor), PanopticDataset(evaluation, processor),
                                train.id2label, evaluation.records, train.stuff_label_ids, train.label2category,
                                train.categories)

    from .data import load_split, resolve_source

    source = resolve_source(config, log)
    train, evaluation = (load_split(source, split, config, log) for split in (config.train_split, config.eval_split))
    log(f"data: {len(train)} train / {len(evaluation)} eval images, {len(train.categories)} classes")
    categories = [dict(c, isthing=1) for c in train.categories.to_coco()]
    return SegmentationData(InstanceMaskDataset(train, processor), InstanceMaskDataset(evaluation, processor),
                            train.id2label, list(evaluation), set(), {i: i for i in train.id2label}, categories)


class InstanceMaskDataset(torch.utils.data.Dataset):
    """Detection records whose objects carry COCO `segmentation`s, encoded with `return_segmentation_masks`."""

    def __init__(self, records, processor):
        self.records = records
        self.processor = processor

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        from detrkit.processing.detection_data import open_image

        record = self.records[index]
        encoded = self.processor(images=open_image(record.image), annotations=record.target(),
                                 return_segmentation_masks=True, do_pad=False, return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"][0], "labels": dict(encoded["labels"][0])}


# --------------------------------------------------------------------------------------------- model


def segmentation_model(detector, freeze_detector: bool):
    """The segmentation model of the same family around `detector` (a DETR or Deformable DETR detector)."""
    from detrkit import modeling

    family = {modeling.DetrForObjectDetection: modeling.DetrForSegmentation,
              modeling.DeformableDetrForObjectDetection: modeling.DeformableDetrForSegmentation}
    for detector_class, segmentation_class in family.items():
        if isinstance(detector, detector_class):
            return segmentation_class.from_detector(detector, freeze_detector=freeze_detector)
    raise UsageError(f"--task panoptic|instance needs a DETR or Deformable DETR detector, got "
                     f"{type(detector).__name__}")


def carry_over_class_rows(detector, checkpoint: Path, log=print) -> int:
    """After the class head was replaced for new classes, start the rows of the classes the checkpoint already
    knew (same name) from its trained rows, so the first step learns the new classes (the stuff) rather than all
    of them again. DETR's last row ("no object") carries over too. Returns how many classes were carried over."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    weights_file = checkpoint / "model.safetensors"
    if not (weights_file.is_file() and (checkpoint / "config.json").is_file()):
        return 0  # a Hub id or a sharded checkpoint: the new rows keep their initialisation
    old_names = {int(k): v for k, v in AutoConfig.from_pretrained(checkpoint).id2label.items()}
    if old_names == detector.config.id2label:
        return 0
    state = load_file(str(weights_file))
    old_index = {name: i for i, name in old_names.items()}
    pairs = [(new, old_index[name]) for new, name in detector.config.id2label.items() if name in old_index]
    if not pairs:
        return 0
    new_rows, old_rows = (torch.tensor(r) for r in zip(*pairs))
    with torch.no_grad():
        for name, param in detector.named_parameters():
            old = state.get(name)
            if old is None or old.shape == param.shape or not any(k in name for k in ("class_embed", "class_labels")):
                continue
            param[new_rows] = old[old_rows].to(param.dtype)
            if param.shape[0] == len(detector.config.id2label) + 1:  # DETR's "no object" row
                param[-1] = old[-1].to(param.dtype)
    log(f"class head: {len(pairs)} of {len(detector.config.id2label)} classes start from the checkpoint's rows")
    return len(pairs)


# --------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_segments(model, loader, processor, task: str, stuff: set[int], threshold: float, device) -> dict:
    """image_id -> the processor's panoptic / instance result at the original size: {"segmentation" (H, W) segment
    ids, "segments_info" [{"id", "label_id", "score", ...}]}."""
    model.eval()
    # The post-processing (transformers' rule) thresholds each query's mask probability weighted by its score.
    # DETR's softmax scores of kept queries are near 1; Deformable DETR's sigmoid focal scores stay far below,
    # so that a weighted probability of 0.5 may be out of reach: ask a query at the score threshold for 0.5.
    sigmoid_scores = bool(getattr(processor, "sigmoid_scores", False))
    mask_threshold = 0.5 * threshold if sigmoid_scores else 0.5
    results = {}
    for batch in tqdm(loader, desc="evaluating", leave=False, dynamic_ncols=True):
        outputs = model(pixel_values=batch["pixel_values"].to(device), pixel_mask=batch["pixel_mask"].to(device))
        sizes = [tuple(int(v) for v in t["orig_size"]) for t in batch["labels"]]
        if task == "panoptic":
            maps = processor.post_process_panoptic_segmentation(outputs, threshold=threshold,
                                                                mask_threshold=mask_threshold,
                                                                label_ids_to_fuse=stuff, target_sizes=sizes)
        else:
            maps = processor.post_process_instance_segmentation(outputs, threshold=threshold,
                                                                mask_threshold=mask_threshold, target_sizes=sizes)
        for target, result in zip(batch["labels"], maps):
            results[int(target["image_id"])] = {"segmentation": torch.as_tensor(result["segmentation"]).cpu(),
                                                "segments_info": result["segments_info"]}
    return results


def panoptic_metrics(data: SegmentationData, predictions: dict) -> dict:
    """PQ / SQ / RQ (All, Things, Stuff, per class) by detrkit.processing's panopticapi-equal metric, against the
    ground-truth PNGs themselves."""
    from detrkit.processing import PanopticQuality, panoptic_prediction

    metric = PanopticQuality(data.categories)
    for record in data.eval_records:
        pred_map, pred_segments = panoptic_prediction(predictions[record.image_id], data.label2category)
        metric.update(record.panoptic_png, record.segments_info, pred_map, pred_segments, image_id=record.image_id)
    result = metric.compute()
    names = {int(c["id"]): c["name"] for c in data.categories}
    groups = (("All", ""), ("Things", "_things"), ("Stuff", "_stuff"))
    summary = {key + suffix: result[group][key] for group, suffix in groups for key in ("pq", "sq", "rq")}
    return {**summary, "per_class": {names[c]: v for c, v in result["per_class"].items()}}


def mask_ap(data: SegmentationData, predictions: dict) -> dict:
    """COCO mask AP (pycocotools' COCOeval, iouType "segm") of the instance segments: AP, AP50, AP75 and AP by
    area as segm_map, segm_map_50, ..."""
    from detrkit.processing.coco_metric import STAT_NAMES, coco_mask_evaluate

    stats = coco_mask_evaluate(data.eval_records, predictions, data.id2label)
    return {f"segm_{name}": stats[name] for name in STAT_NAMES[:6]}


# --------------------------------------------------------------------------------------------- drawing


def draw_panoptic(image, segmentation: torch.Tensor, segments_info: list[dict], id2label: dict) -> torch.Tensor:
    """(3, H, W) uint8: the image with each segment filled in its own colour and labelled at its centre."""
    from PIL import ImageDraw
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_segmentation_masks

    scale = max(1, round(384 / max(image.size)))
    canvas = TF.pil_to_tensor(image.convert("RGB"))
    segmentation = segmentation[None, None].float()
    if scale > 1:
        canvas = TF.resize(canvas, [image.height * scale, image.width * scale], antialias=False)
        segmentation = F.interpolate(segmentation, scale_factor=scale, mode="nearest")
    segmentation = segmentation[0, 0].long()
    if not segments_info:
        return canvas
    masks = torch.stack([segmentation == s["id"] for s in segments_info])
    palette = [tuple(int(255 * c) for c in _colour(i)) for i in range(len(segments_info))]
    canvas = draw_segmentation_masks(canvas, masks, alpha=0.6, colors=palette)
    picture = TF.to_pil_image(canvas)
    draw = ImageDraw.Draw(picture)
    for segment, mask in zip(segments_info, masks):
        if mask.any():
            ys, xs = mask.nonzero(as_tuple=True)
            text = str(id2label.get(int(segment["label_id"]), segment["label_id"]))
            draw.text((float(xs.float().mean()), float(ys.float().mean())), text, fill="white", anchor="mm",
                      stroke_width=2, stroke_fill="black")
    return TF.pil_to_tensor(picture)


def _colour(index: int) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 0.95)  # golden-ratio hues: neighbours differ


def save_pictures(model, processor, data: SegmentationData, predictions: dict, output: Path, threshold: float,
                  device, count: int = 8) -> None:
    """panoptic.png (each predicted segment in its own colour, labelled) and, beside it, predictions.png (the same
    model's detections, boxes and scores) for the first `count` evaluation images."""
    from detrkit.processing.detection_data import open_image

    from .predictions import detect, draw, save_grid

    records = list(data.eval_records)[:count]
    images = [open_image(record.image).convert("RGB") for record in records]
    id2label = model.config.id2label
    save_grid([draw_panoptic(image, predictions[r.image_id]["segmentation"], predictions[r.image_id]["segments_info"],
                             id2label) for image, r in zip(images, records)], output / "panoptic.png")
    detections = detect(model, processor, images, threshold, device)
    save_grid([draw(image, d, id2label) for image, d in zip(images, detections)], output / "predictions.png")


# --------------------------------------------------------------------------------------------- training


def train_segmentation(config: TrainConfig) -> dict:
    """Both steps (or the joint run) as the module docstring says; returns the metrics written to metrics.json."""
    from .config import launcher_settings, resolve_for_data, resolve_for_model
    from .models import load_model

    if config.task not in ("panoptic", "instance"):
        raise UsageError(f"train_segmentation is for --task panoptic|instance, got {config.task!r}")
    started = time.time()
    config, notes = launcher_settings(dataclasses.replace(
        config, output_dir=config.output_dir or default_output_dir(config)))
    output = Path(config.output_dir)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    set_seed(config.seed)
    log = accelerator.print
    loaded = load_model(config, log=log)
    config, model_notes = resolve_for_model(config, loaded.kind, loaded.processor_size,
                                            builtin_data=str(config.data).startswith("shapes-"))
    loaded.size_processor(config)
    data = load_segmentation_data(config, loaded.processor, log)
    detector = loaded.adapt_to_labels(data.id2label, log=log)  # a new class head when the classes differ
    carry_over_class_rows(detector, repo_path(str(loaded.source)), log)
    config, data_notes = resolve_for_data(config, loaded.kind, len(data.train), loaded.pretrained)
    log("chosen for this run: " + "; ".join(notes + model_notes + data_notes))
    output.mkdir(parents=True, exist_ok=True)
    (output / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))

    history = {}
    if config.freeze_detector and config.detector_step:  # the paper's first step
        step1 = dataclasses.replace(config, **config.detector_step)
        overrides = ", ".join(f"{k} {v}" for k, v in config.detector_step.items())
        log(f"step 1: the detector on {len(data.id2label)} classes ({overrides})")
        history["detector"] = train_step(detector, data, step1, accelerator, "detector")
        if accelerator.is_main_process:
            accelerator.unwrap_model(detector).save_pretrained(output / "detector")
    model = segmentation_model(accelerator.unwrap_model(detector), config.freeze_detector)
    model.config.train_matched_masks_only = True  # the mask losses read the matched queries only
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{'step 2: ' if config.freeze_detector else ''}{type(model).__name__}, detector "
        f"{'frozen' if config.freeze_detector else 'trained jointly'}, {trainable / 1e6:.2f}M trainable parameters")
    history["masks"] = train_step(model, data, config, accelerator, "masks")
    model = accelerator.unwrap_model(model)
    model.config.train_matched_masks_only = False

    eval_loader = DataLoader(data.eval, batch_size=config.eval_batch_size, collate_fn=_collator(loaded.processor),
                             num_workers=config.num_workers)
    predictions = predict_segments(model, eval_loader, loaded.processor, config.task, data.stuff_label_ids,
                                   config.threshold, accelerator.device)
    metrics = panoptic_metrics(data, predictions) if config.task == "panoptic" else mask_ap(data, predictions)
    metrics = {"task": config.task, **metrics,
               "steps": {name: {"optimizer_steps": h[-1]["step"] if h else 0, "epochs_run": len(h),
                                "minutes": h[-1]["elapsed_min"] if h else 0.0} for name, h in history.items()},
               "minutes_total": round((time.time() - started) / 60, 2)}
    if accelerator.is_main_process:
        model.save_pretrained(output / "model")
        loaded.processor.save_pretrained(output / "model")
        (output / "history.json").write_text(json.dumps(history, indent=2))
        (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
        save_pictures(model, loaded.processor, data, predictions, output, config.threshold, accelerator.device)
        headline = (f"PQ {metrics['pq']:.4f} (things {metrics['pq_things']:.4f}, stuff {metrics['pq_stuff']:.4f})"
                    if config.task == "panoptic" else f"mask AP {metrics['segm_map']:.4f}")
        log(f"{headline}; wrote {output}/: metrics.json, model/, panoptic.png, predictions.png, history.json "
            f"({metrics['minutes_total']} min)")
    return metrics


def _collator(processor):
    from detrkit.processing.collator import DetectionCollator

    return DetectionCollator(processor)  # pads images and the labels' masks


def train_step(model, data: SegmentationData, config: TrainConfig, accelerator: Accelerator, name: str) -> list:
    """One step of the recipe: AdamW with the paper's parameter groups over the trainable parameters, for
    `config.epochs` epochs or `config.max_train_minutes` / `max_steps`, whichever comes first (the time includes
    building the cache). Returns the per-epoch history (mean losses). The mask head on a frozen detector trains on
    its cached outputs (frozen_detector_cache.py) when `cache_detector_outputs` and one process."""
    started = time.time()
    generator = torch.Generator().manual_seed(config.seed)
    cached = (name == "masks" and config.cache_detector_outputs and accelerator.num_processes == 1
              and accelerator.unwrap_model(model).detector_frozen)
    if cached:
        model = model.to(accelerator.device)
        cache = FrozenDetectorCache.build(model, data.train, _collator(data.train.processor),
                                          config.eval_batch_size or config.batch_size, default_max_bytes(),
                                          accelerator.print)
        loader = DataLoader(cache, batch_size=config.batch_size, shuffle=True, drop_last=True,
                            collate_fn=collate_cached, generator=generator)
    else:
        loader = DataLoader(data.train, batch_size=config.batch_size, shuffle=True, drop_last=True,
                            collate_fn=_collator(data.train.processor), num_workers=config.num_workers,
                            generator=generator)
    if len(loader) == 0:
        raise UsageError(f"{len(data.train)} training images cannot fill one batch of {config.batch_size}")
    optimizer = build_optimizer(model, config.lr, config.lr_backbone_mult, config.lr_linear_proj_mult,
                                config.weight_decay)
    scheduler = build_scheduler(optimizer, len(loader) * config.epochs, config.schedule,
                                config.lr_drop_epoch * len(loader), config.lr_gamma, config.warmup_steps)
    if cached:
        def loss_of(batch):
            return head_loss(model, *batch)
    else:
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

        def loss_of(batch):
            outputs = model(**batch)
            return outputs.loss, outputs.loss_dict
    return _optimize(model, loader, loss_of, optimizer, scheduler, config, accelerator, name, started)


def _optimize(model, loader, loss_of, optimizer, scheduler, config, accelerator, name, started) -> list:
    trainable = [p for p in model.parameters() if p.requires_grad]
    history, step = [], 0

    def done() -> bool:
        late = config.max_train_minutes and time.time() - started > 60 * config.max_train_minutes
        return bool(late or (config.max_steps and step >= config.max_steps))

    for epoch in range(config.epochs):
        model.train()
        sums, count = {}, 0
        for batch in tqdm(loader, desc=f"{name} epoch {epoch + 1}/{config.epochs}", dynamic_ncols=True,
                          disable=not accelerator.is_local_main_process):
            loss, loss_dict = loss_of(batch)
            accelerator.backward(loss)
            if config.clip_grad_norm:
                accelerator.clip_grad_norm_(trainable, config.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            step, count = step + 1, count + 1
            for key, value in {"loss": loss, **loss_dict}.items():
                if key.startswith("loss") and key[-1] not in "0123456789":  # the final layer's terms
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
            if done():
                break
        record = {"epoch": epoch + 1, "step": step, **{k: round(v / max(1, count), 5) for k, v in sums.items()},
                  "elapsed_min": round((time.time() - started) / 60, 2)}
        history.append(record)
        accelerator.print(f"{name} epoch {epoch + 1}: " + "  ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k.startswith("loss")))
        if done():
            accelerator.print(f"{name}: stopped after {step} steps ({record['elapsed_min']} min; max_steps / "
                              "max_train_minutes)")
            break
    return history


__all__ = ["SegmentationData", "draw_panoptic", "load_segmentation_data", "mask_ap", "panoptic_metrics",
           "segmentation_model", "train_segmentation", "train_step"]
