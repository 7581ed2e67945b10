#!/usr/bin/env python
"""Detect objects in images: boxes as JSON and drawn (with labels and scores) on a PNG per image.

    python scripts/predict.py outputs/demo/model image1.png image2.jpg --threshold 0.5 --output-dir preds/
    python scripts/predict.py outputs/demo/model path/to/folder/

Writes predictions.json ({image path: [{"label", "label_id", "score", "box": {xmin, ymin, xmax, ymax}}]}, boxes in
the image's pixels) and <image name>.png with the boxes drawn, into --output-dir.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

# Python puts this folder first on sys.path, where evaluate.py would shadow the `evaluate` package: move it last.
HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != HERE] + [HERE]

from training.predictions import detect, draw, to_json  # noqa: E402
from training.pretrained import load_pretrained  # noqa: E402
from detrkit.processing.detection_data import open_image  # noqa: E402
from torchvision.transforms.v2 import functional as F  # noqa: E402

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def image_paths(inputs: list[str]) -> list[Path]:
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    if not paths:
        raise FileNotFoundError(f"no images found in {inputs}")
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="save_pretrained folder or Hub id")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--output-dir", default="predictions")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load_pretrained(args.model, device)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, results = image_paths(args.images), {}
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        images = []
        for path in chunk:
            try:
                images.append(open_image(path).convert("RGB"))
            except Exception as error:
                raise ValueError(f"{path}: cannot read the image ({error})") from None
        for path, image, detections in zip(chunk, images, detect(model, processor, images, args.threshold, device)):
            results[str(path)] = to_json(detections, id2label)
            F.to_pil_image(draw(image, detections, id2label)).save(out / f"{path.stem}.png")
            print(f"{path}: {len(results[str(path)])} object(s)")
    (out / "predictions.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out}/predictions.json and {len(paths)} PNG(s)")
    return results


if __name__ == "__main__":
    main()
