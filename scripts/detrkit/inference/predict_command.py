"""`detrkit predict`: detect objects in images (files, folders, globs, URLs) or in a data set's split.

    detrkit predict outputs/demo/model image1.png folder/ "shots/*.jpg" https://example.com/cat.jpg
    detrkit predict outputs/demo/model --data path/to/coco --split val --save-coco-json results.json

Writes predictions.json ({input: [{"label", "label_id", "score", "box": {xmin, ymin, xmax, ymax}}]}, boxes in the
image's pixels) and one PNG per image with the boxes drawn, into --output-dir; inputs that share a file name get
distinct output names. --save-coco-json writes COCO results (image_id, category_id, bbox [x, y, w, h], score)
with the data's own image and category ids. The default threshold suits the model's scores (its family's drawing
threshold): 0.5 for DETR's softmax, 0.3 for Deformable DETR's sigmoid focal scores. Video files (video.py) get an
annotated copy and per-frame JSON each.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from detrkit.cli.options import add_alias, add_bool, add_device, add_trust_remote_code
from detrkit.cli.runner import run_command
from detrkit.errors import UsageError

from .image_sources import Source, collect_sources, output_names, read_file, read_rgb


def data_sources(args) -> tuple[list[Source], Any]:
    """The images of a data set's split, with its image ids (for --save-coco-json)."""
    from detrkit.data.sources import read_split, resolve_data_source

    records = read_split(resolve_data_source(args.data, args.data_cache, args.builtin_image_size), args.split,
                         args.data)
    sources = []
    for r in records:
        label = str(r.image) if isinstance(r.image, (str, Path)) else f"{args.data}:{args.split}:{r.image_id}"
        parts = Path(label).parts if isinstance(r.image, (str, Path)) else (f"image-{r.image_id}",)
        sources.append(Source(label, (lambda r=r: read_file(r.image)), tuple(parts), int(r.image_id)))
    return sources, records


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detrkit predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Add --debug to see a traceback on errors.")
    parser.add_argument("model", help="save_pretrained folder or Hub id")
    parser.add_argument("inputs", nargs="*", help="image files, folders, globs (quoted) or http(s) URLs")
    parser.add_argument("--data", help="predict on this data set's --split instead (what `detrkit train --data` "
                                       "takes; default: off, the images given)")
    parser.add_argument("--split", default="val", help="with --data: the split (default: val)")
    parser.add_argument("--data-cache", default="~/.cache/detrkit/data",
                        help="where built-in sets are generated (default: ~/.cache/detrkit/data)")
    parser.add_argument("--builtin-image-size", type=int, default=128,
                        help="built-in sets: the generated size (default: 128); the model's processor sizes images")
    add_alias(parser, "--image-size", "builtin_image_size", type=int)
    parser.add_argument("--threshold", type=float, default=None,
                        help="score threshold (default: 0.5 for DETR's softmax scores, 0.3 for Deformable DETR's)")
    parser.add_argument("--output-dir", default="predictions", help="where the JSON and drawings go "
                                                                    "(default: predictions)")
    parser.add_argument("--save-coco-json", metavar="FILE", help="also write COCO results with the data's image "
                                                                 "and category ids (needs --data; default: off)")
    add_bool(parser, "--drawings", True, "draw each image's detections into --output-dir as a PNG (false: the "
                                         "JSON only)")
    add_alias(parser, "--no-drawings", "drawings", action="store_false")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    add_trust_remote_code(parser)
    add_device(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("predict", argv, lambda args: predict_command(argument_parser().parse_args(args)))


def check_arguments(args) -> None:
    if bool(args.inputs) == bool(args.data):
        raise UsageError("give either images (files, folders, globs, URLs) or --data, not both" if args.inputs
                         else "nothing to predict on: give image files, folders, globs or URLs, or --data")
    if args.save_coco_json and not args.data:
        raise UsageError("--save-coco-json needs --data: COCO results name the data's own image and category ids")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")


def predict_command(args) -> dict:
    from detrkit.cli.device_option import resolve_device
    from detrkit.families import family_of

    from .loading import load_for_inference
    from .video import is_video, predict_video

    check_arguments(args)
    videos = [item for item in args.inputs if is_video(item)]  # annotated video + per-frame JSON each
    images = [item for item in args.inputs if not is_video(item)]
    sources, records = data_sources(args) if args.data else (collect_sources(images) if images else [], None)
    device = resolve_device(args.device)
    model, processor = load_for_inference(args.model, device, trust_remote_code=args.trust_remote_code)
    threshold = args.threshold if args.threshold is not None else family_of(model).drawing_threshold
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_original = coco_category_ids(model, records) if args.save_coco_json else None
    results, coco = predict_images(model, processor, sources, args, threshold, device, to_original)
    for video in videos:
        frames = predict_video(model, processor, video, out, threshold, device, args.batch_size)
        print(f"{video}: {len(frames)} frame(s); wrote {out}/{Path(video).stem}.annotated.mp4 and .json")
    if sources:
        (out / "predictions.json").write_text(json.dumps(results, indent=2))
        print(f"wrote {out}/predictions.json" + (f" and {len(sources)} PNG(s)" if args.drawings else ""))
    if args.save_coco_json:
        Path(args.save_coco_json).write_text(json.dumps(coco))
        print(f"wrote {args.save_coco_json} ({len(coco)} detections, the data's category ids)")
    return results


def predict_images(model, processor, sources: list[Source], args, threshold: float, device,
                   to_original: dict[int, int] | None) -> tuple[dict, list[dict]]:
    """Detect in batches; draw each image into --output-dir. Returns ({input: detections as JSON}, COCO results)."""
    from torchvision.transforms.v2 import functional as F

    from .detections import detect, to_json
    from .detection_drawing import draw_detections

    id2label = {int(k): v for k, v in model.config.id2label.items()}
    out = Path(args.output_dir)
    names, results, coco = output_names(sources), {}, []
    for start in range(0, len(sources), args.batch_size):
        chunk = list(zip(sources[start:start + args.batch_size], names[start:start + args.batch_size]))
        images = [read_rgb(source) for source, _ in chunk]
        found = detect(model, processor, images, threshold, device)
        for (source, name), image, detections in zip(chunk, images, found):
            results[source.name] = to_json(detections, id2label)
            if args.drawings:
                F.to_pil_image(draw_detections(image, detections, id2label)).save(out / f"{name}.png")
            if to_original is not None:
                coco += coco_results(detections, source.image_id, to_original)
            print(f"{source.name}: {len(results[source.name])} object(s) at score >= {threshold:g}")
    return results, coco


def coco_category_ids(model, records) -> dict[int, int]:
    """Model label -> the data's original category id (labels the data does not have are dropped)."""
    from .label_mapping import map_model_labels

    categories = records.categories
    mapping, _ = map_model_labels(model.config.id2label, list(categories.names), list(categories.original_ids))
    return {model_label: int(categories.original_ids[data_label]) for model_label, data_label in mapping.items()}


def coco_results(detections: dict, image_id: int, to_original: dict[int, int]) -> list[dict]:
    results = []
    for score, label, (x0, y0, x1, y1) in zip(detections["scores"].tolist(), detections["labels"].tolist(),
                                              detections["boxes"].tolist()):
        if int(label) in to_original:
            results.append({"image_id": image_id, "category_id": to_original[int(label)],
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "score": round(score, 5)})
    return results
