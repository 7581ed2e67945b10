#!/usr/bin/env python
"""COCO evaluation of a trained detector on a data set: prints the COCO table, writes the numbers as JSON.

    python scripts/evaluate.py outputs/demo/model --data shapes-b
    python scripts/evaluate.py facebook/detr-resnet-50 --data path/to/coco --split val2017 --output coco.json

`--data` takes what train.py takes (built-in name, COCO folder, imagefolder, datasets folder or Hub id).
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

# Python puts this folder first on sys.path, where evaluate.py would shadow the `evaluate` package: move it last.
HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != HERE] + [HERE]

from training.config import TrainConfig  # noqa: E402
from training.data import coco_metric, load_split, resolve_source  # noqa: E402
from training.evaluation import format_table, predict  # noqa: E402
from training.pretrained import load_pretrained  # noqa: E402
from detrkit.processing import DetectionCollator, DetectionDataset  # noqa: E402
from detrkit.processing.coco_metric import coco_evaluate  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="save_pretrained folder or Hub id")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--data-cache", default=TrainConfig.data_cache)
    parser.add_argument("--image-size", type=int, default=TrainConfig.image_size, help="built-in sets' size")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--invalid-records", choices=("skip", "raise"), default="skip")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", help="JSON file for the metrics (default: eval_<split>.json in the model folder "
                                         "when it is local, else ./eval_<split>.json)")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load_pretrained(args.model, device)
    config = TrainConfig(data=args.data, data_cache=args.data_cache, image_size=args.image_size,
                         eval_split=args.split, invalid_records=args.invalid_records, max_eval_samples=args.max_samples)
    records = load_split(resolve_source(config), args.split, config)
    check_labels(model.config.id2label, records.id2label)
    loader = DataLoader(DetectionDataset(records, processor), batch_size=args.batch_size,
                        collate_fn=DetectionCollator(processor))

    def on_device(batches):
        for batch in batches:
            yield {**batch, "pixel_values": batch["pixel_values"].to(device), "pixel_mask": batch["pixel_mask"].to(device)}

    predictions = predict(model, on_device(loader), processor)
    metrics = coco_metric(records, predictions)
    per_class = coco_evaluate([predictions[r.image_id] for r in records], [r.target() for r in records],
                              records.id2label, per_class=True)
    print(f"{args.model} on {args.data} ({args.split}, {len(records)} images)")
    print(format_table(metrics))
    for name, ap in per_class["map_per_class"].items():
        print(f"  AP {name:>20s} = {ap:.3f}")
    local = Path(args.model).expanduser()
    output = Path(args.output) if args.output else (local if local.is_dir() else Path(".")) / f"eval_{args.split}.json"
    output.write_text(json.dumps({**metrics, **per_class, "model": args.model, "data": args.data,
                                  "split": args.split, "num_images": len(records)}, indent=2))
    print(f"wrote {output}")
    return metrics


def check_labels(model_labels: dict, data_labels: dict) -> None:
    """The model's class ids must mean the data's classes, or every AP is silently zero."""
    model_labels = {int(k): v for k, v in model_labels.items()}
    if model_labels != data_labels:
        raise ValueError(f"the model's classes {model_labels} are not the data's {data_labels}; evaluate a model "
                         "fine-tuned on this label set (scripts/train.py replaces the class head)")


if __name__ == "__main__":
    main()
