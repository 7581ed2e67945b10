"""`detrkit data check PATH [--split S]`: what a data set holds and what is wrong with it, before training.

Prints, per split: the layout and file it was read from, the number of images (and those without boxes), boxes
per class with the data's own category ids, small / medium / large counts by COCO's area ranges, every
problem found (the images that training would skip), and what the box rule does to the boxes kept (clipped at the
image edge: counted; zero size or outside the image: dropped, named), as training reports it. Exit status 0 when
no problem was found (clipped and dropped boxes are no problem), 1 when some were;
a source that cannot be read at all is one line on stderr and status 2.
"""
from __future__ import annotations

import argparse
from collections import Counter

from detrkit.cli.runner import run_command

from .layouts import ANY_SPLIT, discover_splits, find_split, open_source
from .record_table import RecordTable
from .records import DetectionData

# COCO's evaluation area ranges (pycocotools' areaRng): small < 32^2 <= medium < 96^2 <= large
SMALL_AREA, LARGE_AREA = 32 ** 2, 96 ** 2
SHOWN_PROBLEMS = 20


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detrkit data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="summarise a data set and list its problems")
    check.add_argument("path", help="a data folder or COCO json (any layout detrkit reads), a datasets "
                                    "save_to_disk folder or a Hub dataset id")
    check.add_argument("--split", default=None, help="check only this split (default: every split found)")
    check.add_argument("--decode", action="store_true",
                       help="decode every image fully (finds truncated files; slower than the default header check; default: off)")
    check.add_argument("--no-cache", action="store_true", help="check again even if the records are cached (default: off)")
    return parser


def records_without_segmentation(data: DetectionData):
    """The records, without decoding polygons (nothing here reads them)."""
    if isinstance(data.records, RecordTable):
        return (data.records.get(i, segmentation=False) for i in range(len(data.records)))
    return iter(data.records)


def summary(data: DetectionData, split: str, where: str) -> list[str]:
    """The report lines of one split."""
    per_class, sizes, crowd, empty = Counter(), Counter(), 0, 0
    for record in records_without_segmentation(data):
        empty += not record.annotations
        for ann in record.annotations:
            per_class[ann["category_id"]] += 1
            crowd += ann["iscrowd"]
            area = ann["area"]
            sizes["small" if area < SMALL_AREA else "medium" if area < LARGE_AREA else "large"] += 1
    boxes = sum(per_class.values())
    cats = data.categories
    width = max((len(n) for n in cats.names), default=4)
    lines = [f"split {split} ({data.layout}): {where}",
             f"  images: {len(data)} usable, {empty} without boxes, {data.num_skipped} with problems",
             f"  boxes: {boxes} ({crowd} crowd / difficult) in {len(cats)} classes"]
    lines += [f"    {label:>3} {name:<{width}}  id {original:>4}: {per_class[label]}"
              for label, (name, original) in enumerate(zip(cats.names, cats.original_ids))]
    share = (lambda n: f"{100 * n / boxes:.1f}%") if boxes else (lambda n: "-")
    lines.append("  sizes (COCO area ranges): " + ", ".join(
        f"{name} {sizes[name]} ({share(sizes[name])})" for name in ("small", "medium", "large")))
    if data.problems:
        lines.append(f"  problems: {len(data.problems)}")
        lines += [f"    - {p}" for p in data.problems[:SHOWN_PROBLEMS]]
        if len(data.problems) > SHOWN_PROBLEMS:
            lines.append(f"    ... and {len(data.problems) - SHOWN_PROBLEMS} more")
    else:
        lines.append("  problems: none")
    lines += [f"  {line}" for line in data.boxes.lines(SHOWN_PROBLEMS)]  # the report training logs, word for word
    return lines


def check_command(args: argparse.Namespace) -> int:
    source = open_source(args.path)
    splits = discover_splits(source)
    chosen = {args.split: find_split(splits, args.split, args.path)} if args.split else \
        {name: split for name, split in splits.items()}
    if not chosen:
        find_split(splits, "train", args.path)  # raises: no layout found
    options = {"check_images": "decode" if args.decode else "header"}
    if args.no_cache:
        options["cache_dir"] = False
    print(f"data: {args.path}")
    found = 0
    for name, split in chosen.items():
        data = split.load("skip", **options)
        found += len(data.problems)
        print("\n".join(summary(data, "(only)" if name == ANY_SPLIT else name, split.where)))
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    return run_command("data", argv, lambda args: check_command(argument_parser().parse_args(args)))
