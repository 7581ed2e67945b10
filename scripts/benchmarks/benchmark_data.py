"""Data loading at COCO train2017 size: first load, cached load, resident records, DataLoader workers' memory.

Generates a COCO-layout set of COCO train2017's size (118,287 images, 860,001 boxes with polygons, 80 sparse
category ids; the images are hard links of four real JPEG files) in a temporary folder outside the repository,
then measures, each in a fresh process so that nothing is shared by accident:

1. first load of the train2017 split (json parse, header check of every image, validation, Arrow cache write);
2. second load (the cache hit: the records are memory-mapped, nothing is parsed);
3. resident memory of the records: the process's RSS after the load minus before it;
4. 4 DataLoader workers making one full pass over the records in random order (each item builds the record,
   polygons included): their memory right after starting (first batch received) and after the pass, as USS
   (private pages), PSS (shared pages split between the processes) and private anonymous memory, from
   /proc/PID/smaps_rollup. ``--records list`` runs the same pass over a plain Python list of the records, the
   copy-on-read baseline the Arrow table replaces.

Targets: first load <= 60 s, cached load <= 5 s, <= 300 MB resident for the records, workers <= 1.2x.

    nice -n 10 python scripts/benchmarks/benchmark_data.py [--num-images 118287] [--num-boxes 860001] [--workers 4]
    python scripts/benchmarks/benchmark_data.py --num-images 2000        # a quick run
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COCO_TRAIN2017 = (118_287, 860_001)
IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375))  # (width, height), COCO's most common shapes
MISSING_COCO_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # COCO's 80 classes use 1..90 without these
CATEGORY_IDS = [i for i in range(1, 91) if i not in MISSING_COCO_IDS]
CHUNK = 5000  # images written per json chunk: bounds the generator's memory
GOALS = {"first_load_s": 60.0, "cached_load_s": 5.0, "records_resident_mb": 300.0, "worker_ratio": 1.2}


# --- generation --------------------------------------------------------------------------------------------------

def write_images(folder: Path, num_images: int, rng) -> np.ndarray:
    """Hard links of a few real JPEGs: every record has its own path and a readable header. Returns the sizes."""
    from PIL import Image

    folder.mkdir(parents=True)
    masters = []
    for k, (width, height) in enumerate(IMAGE_SIZES):
        path = folder.parent / f"master_{k}.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=80)
        masters.append(path)
    for i in range(num_images):
        os.link(masters[i % len(masters)], folder / f"{i:012d}.jpg")
    return np.array([IMAGE_SIZES[i % len(IMAGE_SIZES)] for i in range(num_images)], dtype=np.float64)


def box_counts(num_images: int, num_boxes: int, rng) -> np.ndarray:
    counts = np.full(num_images, num_boxes // num_images)
    counts[rng.choice(num_images, num_boxes % num_images, replace=False)] += 1
    return counts


def boxes_and_polygons(sizes: np.ndarray, points: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """COCO-like boxes (log-uniform sides: small, medium and large objects) and a jagged polygon in each."""
    n = len(sizes)
    wh = np.exp(rng.uniform(np.log(4.0), np.log(sizes * 0.9), size=(n, 2)))
    xy = rng.uniform(0, 1, size=(n, 2)) * (sizes - wh)
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=(n, points)), axis=1)
    radius = rng.uniform(0.6, 1.0, size=(n, points))
    px = xy[:, :1] + wh[:, :1] / 2 * (1 + radius * np.cos(angles))
    py = xy[:, 1:] + wh[:, 1:] / 2 * (1 + radius * np.sin(angles))
    polygons = np.round(np.stack([px, py], -1).reshape(n, 2 * points), 2)
    return np.round(np.concatenate([xy, wh], 1), 2), polygons


def write_annotations(path: Path, sizes: np.ndarray, num_boxes: int, points: int, rng) -> None:
    """A COCO instances json written chunk by chunk (orjson serializes the numpy rows)."""
    import orjson

    option = orjson.OPT_SERIALIZE_NUMPY
    num_images = len(sizes)
    counts = box_counts(num_images, num_boxes, rng)
    next_id = 1
    with open(path, "wb") as out:
        out.write(b'{"info":{"description":"synthetic set of COCO train2017 size"},"licenses":[],"images":[')
        for start in range(0, num_images, CHUNK):
            images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": int(sizes[i, 0]), "height": int(sizes[i, 1])}
                      for i in range(start, min(start + CHUNK, num_images))]
            out.write((b"," if start else b"") + orjson.dumps(images)[1:-1])
        out.write(b'],"annotations":[')
        first = True
        for start in range(0, num_images, CHUNK):
            stop = min(start + CHUNK, num_images)
            image_of = np.repeat(np.arange(start, stop), counts[start:stop])
            if not len(image_of):
                continue
            boxes, polygons = boxes_and_polygons(sizes[image_of], points, rng)
            categories = rng.choice(CATEGORY_IDS, size=len(image_of))
            anns = [{"id": next_id + k, "image_id": int(image_of[k]), "category_id": int(categories[k]),
                     "bbox": boxes[k], "area": round(float(boxes[k, 2] * boxes[k, 3]) * 0.7, 2), "iscrowd": 0,
                     "segmentation": polygons[k:k + 1]} for k in range(len(image_of))]
            next_id += len(anns)
            out.write((b"" if first else b",") + orjson.dumps(anns, option=option)[1:-1])
            first = False
        categories = [{"id": i, "name": f"class_{i}", "supercategory": "thing"} for i in CATEGORY_IDS]
        out.write(b'],"categories":' + orjson.dumps(categories) + b"}")


def generate(root: Path, num_images: int, num_boxes: int, points: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    sizes = write_images(root / "train2017", num_images, rng)
    (root / "annotations").mkdir()
    write_annotations(root / "annotations" / "instances_train2017.json", sizes, num_boxes, points, rng)


# --- measurements (each in its own process) ----------------------------------------------------------------------

def memory(pid: int) -> dict[str, float]:
    """MB from /proc/PID/smaps_rollup: rss, pss, uss (private clean + dirty), anon (private anonymous)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":")
        fields[name] = int(value.split()[0]) / 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"],
            "anon": fields.get("Pss_Anon", fields["Anonymous"])}


def stage_load(root: Path) -> dict:
    from detrkit.data.layouts import load_detection_data

    gc.collect()
    before = memory(os.getpid())["rss"]
    start, cpu = time.perf_counter(), time.process_time()
    data = load_detection_data(root, "train2017", on_error="raise")
    seconds = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the process that parsed, if the loader forked one
    cpu_seconds = time.process_time() - cpu + children.ru_utime + children.ru_stime
    gc.collect()
    after = memory(os.getpid())["rss"]
    boxes = int(data.records.table.column("annotations").combine_chunks().value_lengths().to_numpy().sum())
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "records_resident_mb": after - before,
            "images": len(data), "boxes": boxes,
            "peak_rss_mb": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, children.ru_maxrss) / 1024,
            "cache_mb": data.cache_file.stat().st_size / 2 ** 20 if data.cache_file else None}


class RecordPass:
    """Items that build each record, polygons included, and return its box count (a torch Dataset by duck type)."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return len(self.records[index].annotations)


def total(batch):
    return sum(batch)


def stage_workers(root: Path, workers: int, records_kind: str, batch_size: int) -> dict:
    import torch

    from detrkit.data.layouts import load_detection_data

    data = load_detection_data(root, "train2017", on_error="raise")
    records = list(data.records) if records_kind == "list" else data.records
    gc.collect()
    loader = torch.utils.data.DataLoader(RecordPass(records), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, persistent_workers=True, collate_fn=total)
    iterator = iter(loader)
    boxes = next(iterator)
    pids = [w.pid for w in iterator._workers]
    started = [memory(pid) for pid in pids]
    start = time.perf_counter()
    for batch in iterator:
        boxes += batch
    seconds = time.perf_counter() - start
    finished = [memory(pid) for pid in pids]  # persistent workers are still alive after the epoch
    ratios = {key: max(f[key] / s[key] for s, f in zip(started, finished)) for key in ("uss", "pss", "anon")}
    return {"records": records_kind, "boxes": boxes, "pass_seconds": seconds, "started": started,
            "finished": finished, "ratios": ratios}


def run_stage(args: list[str], env: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"stage {args} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def mean(values):
    return sum(values) / len(values)


def report(first: dict, second: dict, passes: list[dict], generated_s: float, json_mb: float) -> list[str]:
    def verdict(value, goal):
        return "ok" if value <= goal else "MISSED"

    lines = [f"generated: {first['images']} images, {first['boxes']} boxes, json {json_mb:.0f} MB in "
             f"{generated_s:.1f} s; Arrow cache {first['cache_mb']:.0f} MB",
             f"first load:  {first['seconds']:6.1f} s, {first['cpu_seconds']:.1f} s of CPU (goal <= "
             f"{GOALS['first_load_s']:.0f} s: {verdict(first['seconds'], GOALS['first_load_s'])}), peak RSS "
             f"{first['peak_rss_mb']:.0f} MB (the parsing process, imports included)",
             f"cached load: {second['seconds']:6.2f} s, {second['cpu_seconds']:.2f} s of CPU (goal <= "
             f"{GOALS['cached_load_s']:.0f} s: "
             f"{verdict(second['seconds'], GOALS['cached_load_s'])}), "
             f"{first['seconds'] / max(second['seconds'], 1e-9):.0f}x faster",
             f"records resident: {first['records_resident_mb']:.0f} MB after the first load, "
             f"{second['records_resident_mb']:.0f} MB after the cached load (goal <= "
             f"{GOALS['records_resident_mb']:.0f} MB: "
             f"{verdict(max(first['records_resident_mb'], second['records_resident_mb']), GOALS['records_resident_mb'])})"]
    for run in passes:
        s, f, r = run["started"], run["finished"], run["ratios"]
        assert run["boxes"] == first["boxes"], (run["boxes"], first["boxes"])  # the pass saw every record
        lines.append(
            f"{len(s)} workers, one pass over {run['records']} records ({run['pass_seconds']:.1f} s), mean per worker "
            f"start -> end: USS {mean([m['uss'] for m in s]):.0f} -> {mean([m['uss'] for m in f]):.0f} MB, "
            f"PSS {mean([m['pss'] for m in s]):.0f} -> {mean([m['pss'] for m in f]):.0f} MB, "
            f"anon {mean([m['anon'] for m in s]):.0f} -> {mean([m['anon'] for m in f]):.0f} MB; "
            f"worst worker ratio USS {r['uss']:.2f}x, PSS {r['pss']:.2f}x, anon {r['anon']:.2f}x"
            + (f" (goal <= {GOALS['worker_ratio']}x: {verdict(r['uss'], GOALS['worker_ratio'])})"
               if run["records"] == "arrow" else " (the copy-on-read baseline)"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=COCO_TRAIN2017[0])
    parser.add_argument("--num-boxes", type=int, default=None,
                        help="default: COCO train2017's 7.27 boxes per image (860,001 for 118,287 images)")
    parser.add_argument("--points", type=int, default=30, help="polygon vertices per box (json ~450 MB at COCO size)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--records", choices=("arrow", "list", "both"), default="arrow",
                        help="records of the worker pass: the Arrow table, a Python list (baseline), or both")
    parser.add_argument("--workdir", default=None, help="parent folder of the generated set (default: the system "
                                                        "temp folder); it is deleted afterwards")
    parser.add_argument("--stage", choices=("load", "workers"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage == "load":
        print(json.dumps(stage_load(Path(args.root))))
        return 0
    if args.stage == "workers":
        print(json.dumps(stage_workers(Path(args.root), args.workers, args.records, args.batch_size)))
        return 0
    num_boxes = args.num_boxes or round(args.num_images * COCO_TRAIN2017[1] / COCO_TRAIN2017[0])
    work = Path(tempfile.mkdtemp(prefix="detrkit-benchmark-data-", dir=args.workdir))
    try:
        root = work / "coco"
        start = time.perf_counter()
        generate(root, args.num_images, num_boxes, args.points)
        generated_s = time.perf_counter() - start
        json_mb = (root / "annotations" / "instances_train2017.json").stat().st_size / 2 ** 20
        env = {**os.environ, "DETRKIT_CACHE": str(work / "cache")}
        first = run_stage(["--stage", "load", "--root", str(root)], env)
        second = run_stage(["--stage", "load", "--root", str(root)], env)
        kinds = ("arrow", "list") if args.records == "both" else (args.records,)
        passes = [run_stage(["--stage", "workers", "--root", str(root), "--workers", str(args.workers),
                             "--records", kind, "--batch-size", str(args.batch_size)], env) for kind in kinds]
        print("\n".join(report(first, second, passes, generated_s, json_mb)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
