"""What `detrkit evaluate` writes beside its JSON: per-class AP, a confusion matrix and precision-recall curves.

The curves are COCOeval's own interpolated precision at 101 recall points (IoU 0.50 and the 0.50:0.95 mean, all
areas, 100 detections), so they are the curves whose areas are the reported APs. The confusion matrix follows
the usual detection convention: detections above the drawing threshold are matched greedily by score to the
unmatched ground-truth box of highest IoU (>= 0.5) in the same image whatever its class; unmatched detections
count in the "background" row (false positives), unmatched ground truth in the "background" column (missed).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert, box_iou


def coco_precision(references: list[dict], predictions: list[dict], num_classes: int) -> np.ndarray:
    """COCOeval's precision array (10 IoUs, 101 recalls, classes, 4 areas, 3 max-dets); -1 where undefined."""
    images, annotations, detections = [], [], []
    for reference, prediction in zip(references, predictions):
        image_id = int(reference["image_id"])
        images.append({"id": image_id})
        for a in reference["annotations"]:
            annotations.append({**a, "image_id": image_id, "id": len(annotations) + 1,
                                "area": a.get("area", a["bbox"][2] * a["bbox"][3]), "iscrowd": a.get("iscrowd", 0)})
        xywh = box_convert(prediction["boxes"].reshape(-1, 4).float(), "xyxy", "xywh").tolist()
        detections += [{"image_id": image_id, "category_id": int(l), "score": float(s), "bbox": b}
                       for s, l, b in zip(prediction["scores"].tolist(), prediction["labels"].tolist(), xywh)]
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": annotations,
                       "categories": [{"id": k} for k in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        if not detections:
            return -np.ones((10, 101, num_classes, 4, 3))
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval.eval["precision"]


def confusion_matrix(references: list[dict], predictions: list[dict], num_classes: int, threshold: float,
                     iou_threshold: float = 0.5) -> np.ndarray:
    """(classes + 1) x (classes + 1) counts: rows = predicted class (+ background), columns = true class
    (+ background)."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    background = num_classes
    for reference, prediction in zip(references, predictions):
        gt_boxes = torch.tensor([a["bbox"] for a in reference["annotations"]], dtype=torch.float32).reshape(-1, 4)
        gt_boxes = box_convert(gt_boxes, "xywh", "xyxy")
        gt_labels = [int(a["category_id"]) for a in reference["annotations"]]
        keep = prediction["scores"] >= threshold
        order = torch.argsort(prediction["scores"][keep], descending=True)
        boxes, labels = prediction["boxes"][keep][order].float(), prediction["labels"][keep][order].tolist()
        ious = box_iou(boxes, gt_boxes) if len(boxes) and len(gt_boxes) else torch.zeros(len(boxes), len(gt_boxes))
        matched = set()
        for i, label in enumerate(labels):
            candidates = [(float(ious[i, j]), j) for j in range(len(gt_labels))
                          if j not in matched and ious[i, j] >= iou_threshold]
            if candidates:
                j = max(candidates)[1]
                matched.add(j)
                matrix[label, gt_labels[j]] += 1
            else:
                matrix[label, background] += 1
        for j, truth in enumerate(gt_labels):
            if j not in matched:
                matrix[background, truth] += 1
    return matrix


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height))


def plot_confusion(matrix: np.ndarray, names: list[str], path: str | Path, threshold: float) -> None:
    labels = [*names, "background"]
    size = max(5.0, 0.45 * len(labels) + 2)
    plt, fig, ax = _figure(size + 1, size)
    shown = matrix / np.maximum(matrix.sum(axis=0, keepdims=True), 1)  # share of each true class
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 30:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="true class", ylabel="predicted class",
           title=f"confusion matrix (score >= {threshold:g}, IoU >= 0.5; colour: share of the true class)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_precision_recall(precision: np.ndarray, names: list[str], path: str | Path) -> None:
    """One curve per class at IoU 0.50 (left) and averaged over IoU 0.50:0.95 (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recall = np.linspace(0, 1, precision.shape[1])
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, title, curves in ((axes[0], "IoU 0.50", precision[0, :, :, 0, -1]),
                              (axes[1], "IoU 0.50:0.95 (mean)", _mean_over_iou(precision[:, :, :, 0, -1]))):
        for k, name in enumerate(names):
            curve = curves[:, k]
            if (curve > -1).any():
                ax.plot(recall, np.clip(curve, 0, 1), label=f"{name} {np.clip(curve, 0, 1).mean():.3f}")
        ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall, {title}", xlim=(0, 1), ylim=(0, 1.02))
        if ax.lines and len(names) <= 20:
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mean_over_iou(precision: np.ndarray) -> np.ndarray:
    valid = precision > -1
    total = np.where(valid, precision, 0).sum(axis=0)
    count = valid.sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), -1)


def plot_per_class_ap(per_class: dict[str, float], path: str | Path) -> None:
    names = list(per_class)
    plt, fig, ax = _figure(max(6.0, 0.35 * len(names) + 2), 4)
    ax.bar(range(len(names)), [max(0.0, per_class[n]) for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set(ylabel="AP (IoU 0.50:0.95)", title="AP per class", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(references: list[dict], predictions: list[dict], names: list[str], per_class_ap: dict,
                 folder: str | Path, stem: str, threshold: float) -> tuple[list[Path], np.ndarray]:
    """Writes <stem>_per_class_ap.png, <stem>_confusion_matrix.png, <stem>_pr_curves.png; returns their paths
    and the confusion matrix."""
    folder = Path(folder)
    paths = [folder / f"{stem}_{name}" for name in ("per_class_ap.png", "confusion_matrix.png", "pr_curves.png")]
    plot_per_class_ap(per_class_ap, paths[0])
    matrix = confusion_matrix(references, predictions, len(names), threshold)
    plot_confusion(matrix, names, paths[1], threshold)
    plot_precision_recall(coco_precision(references, predictions, len(names)), names, paths[2])
    return paths, matrix
