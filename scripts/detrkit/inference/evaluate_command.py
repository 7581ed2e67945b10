"""`detrkit evaluate`: COCO evaluation of a detector on a data set.

    detrkit evaluate outputs/demo/model --data shapes-b
    detrkit evaluate facebook/detr-resnet-50 --data path/to/coco --split val2017

Prints the COCO table and AP per class; writes eval_<split>.json (metrics, per-class AP and AR, the confusion
matrix) and beside it <stem>_per_class_ap.png, <stem>_confusion_matrix.png and <stem>_pr_curves.png
(per_class_report.py). The
model's labels are matched to the data's categories by original id or by name (label_mapping.py), so a COCO
checkpoint with 91 label slots evaluates on a COCO-format set with sparse ids.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from detrkit.cli.options import add_alias, add_device, add_trust_remote_code
from detrkit.cli.runner import run_command

DEFAULT_DATA_CACHE = "~/.cache/detrkit/data"


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detrkit evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Add --debug to see a traceback on errors.")
    parser.add_argument("model", help="save_pretrained folder or Hub id")
    parser.add_argument("--data", required=True, help="what `detrkit train --data` takes")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--data-cache", default=DEFAULT_DATA_CACHE,
                        help=f"where built-in sets are generated (default: {DEFAULT_DATA_CACHE})")
    parser.add_argument("--builtin-image-size", type=int, default=128,
                        help="built-in sets: the generated size (default: 128); the model's processor sizes images")
    add_alias(parser, "--image-size", "builtin_image_size", type=int)
    parser.add_argument("--max-eval-samples", type=int, default=None,
                        help="use only the first N evaluation images (default: off, all)")
    add_alias(parser, "--max-samples", "max_eval_samples", type=int)
    parser.add_argument("--invalid-records", choices=("skip", "raise"), default="skip",
                        help="a bad image or annotation: skip (reported) or raise (default: skip)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="score threshold of the confusion matrix (default: 0.5 for softmax DETR, 0.3 for "
                             "sigmoid Deformable DETR)")
    add_trust_remote_code(parser)
    add_device(parser)
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: horizontal flip x scales, merged by class-wise NMS (tta.py) "
                             "(default: off)")
    parser.add_argument("--tta-scales", type=float, nargs="+", default=[0.8, 1.0, 1.2],
                        help="TTA scale factors of the processor's size (default: 0.8 1.0 1.2)")
    parser.add_argument("--output", help="JSON file for the metrics (default: eval_<split>.json in the model folder "
                                         "when it is local, else ./eval_<split>.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("evaluate", argv, lambda args: evaluate_command(argument_parser().parse_args(args)))


def load_records(args):
    """The split's records, as `detrkit train --data` reads them."""
    from detrkit.data.sources import read_split, resolve_data_source

    source = resolve_data_source(args.data, args.data_cache, args.builtin_image_size)
    return read_split(source, args.split, args.data, args.invalid_records, args.max_eval_samples)


def predict_split(model, processor, records, args, device) -> dict[int, dict]:
    """image_id -> every detection of the model (threshold 0), with TTA when asked."""
    from torch.utils.data import DataLoader

    from detrkit.data.collator import DetectionCollator
    from detrkit.data.dataset import DetectionDataset

    from .coco_evaluation import predict

    loader = DataLoader(DetectionDataset(records, processor), batch_size=args.batch_size,
                        collate_fn=DetectionCollator(processor))
    batches = ({**batch, "pixel_values": batch["pixel_values"].to(device), "pixel_mask": batch["pixel_mask"].to(device)}
               for batch in loader)
    if not args.tta:
        return predict(model, batches, processor)
    from .tta import TTAConfig, predict_tta

    return predict_tta(model, batches, processor, TTAConfig(scales=tuple(args.tta_scales)))


def evaluate_command(args) -> dict:
    from detrkit.cli.device_option import resolve_device
    from detrkit.families import family_of
    from detrkit.metrics.coco_ap import coco_evaluate

    from .coco_evaluation import format_table
    from .label_mapping import map_model_labels, remap_detections
    from .loading import load_for_inference

    if args.batch_size < 1 or (args.max_eval_samples is not None and args.max_eval_samples < 1):
        raise ValueError("--batch-size and --max-eval-samples must be >= 1")
    device = resolve_device(args.device)
    records = load_records(args)
    model, processor = load_for_inference(args.model, device, trust_remote_code=args.trust_remote_code)
    categories = records.categories
    mapping, matched_by = map_model_labels(model.config.id2label, list(categories.names),
                                           list(getattr(categories, "original_ids", None) or []) or None)
    if matched_by != "same":
        print(f"model labels matched to the data's {len(categories)} categories by {matched_by}")
    raw = predict_split(model, processor, records, args, device)
    references = [r.target() for r in records]
    predictions = [remap_detections(raw[int(r["image_id"])], mapping) for r in references]
    metrics = coco_evaluate(predictions, references, records.id2label, per_class=True)
    threshold = args.threshold if args.threshold is not None else family_of(model).drawing_threshold
    print(f"{args.model} on {args.data} ({args.split}, {len(records)} images)")
    print(format_table(metrics))
    for name, ap in metrics["map_per_class"].items():
        print(f"  AP {name:>20s} = {ap:.3f}")
    write_results(args, records, references, predictions, metrics, matched_by, threshold)
    return metrics


def write_results(args, records, references, predictions, metrics, matched_by: str, threshold: float) -> None:
    """eval_<split>.json (or --output) and the report's pictures beside it."""
    from .per_class_report import write_report

    local = Path(args.model).expanduser()
    output = Path(args.output) if args.output else (local if local.is_dir() else Path(".")) / f"eval_{args.split}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    pictures, matrix = write_report(references, predictions, list(records.categories.names),
                                    metrics["map_per_class"], output.parent, output.stem, threshold)
    output.write_text(json.dumps({**metrics, "model": args.model, "data": args.data, "split": args.split,
                                  "num_images": len(records), "labels_matched_by": matched_by,
                                  "tta": {"scales": args.tta_scales, "flip": True, "merge": "class-wise NMS"}
                                  if args.tta else None,
                                  "confusion_matrix": {"threshold": threshold, "rows": "predicted class + background",
                                                       "columns": "true class + background",
                                                       "counts": matrix.tolist()}}, indent=2))
    print(f"wrote {output}, " + ", ".join(p.name for p in pictures))
