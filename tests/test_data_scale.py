"""Loading that grows gently: the Arrow records cache, header-only checks with decode failures skipped and counted
inside DataLoader workers, records shared with workers, and `detrkit data check`."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from detrkit.data import cache, coco, validation
from detrkit.data.builtin.shapes import write_builtin_dataset
from detrkit.data.check import main as data_main
from detrkit.data.coco import load_coco
from detrkit.data.collator import DetectionCollator
from detrkit.data.dataset import DetectionDataset
from detrkit.data.layouts import load_detection_data
from detrkit.data.problems import InvalidDatasetError
from detrkit.data.record_table import RecordTable
from detrkit.processing import DetrImageProcessor



@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETRKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def shapes(tmp_path):
    return write_builtin_dataset("shapes-b", tmp_path / "shapes", num_train=12, num_val=4, image_size=48, seed=3)


def test_second_load_maps_the_cache_without_parsing(shapes, monkeypatch):
    first = load_detection_data(shapes.root, split="train")
    assert first.cache_file is not None and first.cache_file.is_file()
    expected = [(r.image_id, r.image, r.width, r.height, r.annotations) for r in first]

    def no_parsing(path):
        raise AssertionError(f"the cached load parsed {path}")

    monkeypatch.setattr(coco, "read_json", no_parsing)
    monkeypatch.setattr(validation, "image_size", no_parsing)
    second = load_detection_data(shapes.root, split="train")
    assert second.cache_file == first.cache_file and second.categories == first.categories
    assert [(r.image_id, r.image, r.width, r.height, r.annotations) for r in second] == expected


def test_the_cache_key_follows_the_annotation_file(shapes):
    json_file = shapes.splits["train"][1]
    first = load_detection_data(shapes.root, split="train")
    coco = json.loads(json_file.read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 0]
    json_file.write_text(json.dumps(coco))  # new size and mtime: a new key, the edit is seen
    second = load_detection_data(shapes.root, split="train")
    assert second.cache_file != first.cache_file
    assert not next(r for r in second if r.image_id == 0).annotations
    assert next(r for r in first if r.image_id == 0).annotations  # the old mapping still reads its own file


def test_problems_are_cached_too_and_on_error_applies_after_the_cache(shapes):
    image_dir, json_file = shapes.splits["train"]
    (image_dir / "000003.png").unlink()
    with pytest.raises(InvalidDatasetError, match="image 3: image file not found"):
        load_coco(json_file, image_dir)
    data = load_coco(json_file, image_dir, on_error="skip")  # from the cache, same problems
    assert data.cache_file is not None and [str(p) for p in data.problems] == [
        f"image 3: image file not found: {image_dir / '000003.png'}"] and data.num_skipped == 1


def test_cache_can_be_turned_off(shapes, tmp_path):
    data = load_detection_data(shapes.root, split="train", cache_dir=False)
    assert data.cache_file is None and len(data) == 12
    assert not (tmp_path / "cache").exists()


def test_record_table_views_and_pickling(shapes):
    data = load_detection_data(shapes.root, split="train")
    records = data.records
    assert isinstance(records, RecordTable)
    view = records[2:7]
    assert isinstance(view, RecordTable) and len(view) == 5
    assert [r.image_id for r in view] == [r.image_id for r in list(records)[2:7]]
    assert view[-1].annotations == records[6].annotations
    copy = pickle.loads(pickle.dumps(view))  # a spawned worker maps the cache file again
    assert [r.annotations for r in copy] == [r.annotations for r in view]
    assert len(pickle.dumps(view)) < 1000  # the path travels, not the records
    with pytest.raises(IndexError):
        records[len(records)]


def truncate_after_header(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_decode_failures_in_workers_are_skipped_and_counted(tmp_path):
    # JPEGs, so that a file cut after its header passes the header check and fails only when decoded
    folder = tmp_path / "jpegs"
    folder.mkdir()
    lines = []
    for i in range(8):
        Image.effect_noise((160, 120), 60).convert("RGB").save(folder / f"{i}.jpg", quality=90)
        lines.append(json.dumps({"file_name": f"{i}.jpg", "image_id": i,
                                 "objects": {"bbox": [[2, 2, 10, 10]], "category": ["thing"]}}))
    (folder / "metadata.jsonl").write_text("\n".join(lines))
    truncate_after_header(folder / "2.jpg")
    truncate_after_header(folder / "5.jpg")
    data = load_detection_data(folder)  # header-only checks: both still look fine
    assert len(data) == 8 and not data.problems

    dataset = DetectionDataset(data, DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 48}))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2,
                                         collate_fn=DetectionCollator(dataset.processor))
    ids = [int(label["image_id"]) for batch in loader for label in batch["labels"]]
    assert len(ids) == 8  # batches keep their size: each bad image is replaced by the next record
    assert 2 not in ids and 5 not in ids and ids.count(3) == 2 and ids.count(6) == 2
    assert dataset.skipped.count == 2  # counted across the worker processes
    list(loader)  # each epoch counts again
    assert dataset.skipped.count == 4
    assert pickle.loads(pickle.dumps(dataset)).skipped.count == 4  # outside spawning: a detached copy


def test_all_images_gone_is_an_error_not_a_loop(tmp_path, shapes):
    data = load_detection_data(shapes.root, split="val")
    for record in data:
        os.unlink(record.image)
    dataset = DetectionDataset(data, DetrImageProcessor())
    with pytest.raises(RuntimeError, match="cannot be decoded; is the image folder still there"):
        dataset[0]


def test_data_check_prints_a_summary(shapes, tmp_path, capsys):
    coco = json.loads(shapes.splits["val"][1].read_text())
    dropped, bad = coco["annotations"][0], coco["annotations"][-1]
    assert dropped["image_id"] != bad["image_id"]
    dropped["bbox"] = [50.0, 50.0, 10.0, 10.0]  # outside the 48 px image: dropped by the box rule, named
    bad["bbox"] = [1.0, 2.0, -3.0, 4.0]  # malformed: its image is left out
    shapes.splits["val"][1].write_text(json.dumps(coco))
    assert data_main(["check", str(shapes.root)]) == 1  # problems found
    out = capsys.readouterr().out
    train = load_detection_data(shapes.root, split="train")
    boxes = [a for r in train for a in r.annotations]
    assert f"split train (coco): {shapes.splits['train'][1]}" in out
    assert f"images: 12 usable, 0 without boxes, 0 with problems" in out
    assert f"boxes: {len(boxes)} (0 crowd / difficult) in 5 classes" in out
    for label, name in train.id2label.items():
        count = sum(a["category_id"] == label for a in boxes)
        assert f"{label:>3} {name:<8}  id {train.categories.to_original_id(label):>4}: {count}" in out
    small = sum(a["area"] < 32 ** 2 for a in boxes)
    assert f"small {small} (" in out
    assert "split val (coco)" in out and "images: 3 usable, 0 without boxes, 1 with problems" in out
    assert f"image {bad['image_id']}: annotation {bad['id']}: 'bbox' [1.0, 2.0, -3.0, 4.0] has negative" in out
    assert "boxes dropped (zero size or outside the image): 1" in out and (
        f"    - image {dropped['image_id']}: annotation {dropped['id']}: 'bbox' [50.0, 50.0, 10.0, 10.0] lies "
        f"entirely outside the 48x48 (width x height) image: dropped") in out

    assert data_main(["check", str(shapes.root), "--split", "train"]) == 0
    assert "split val" not in capsys.readouterr().out
    assert data_main(["check", str(shapes.root), "--split", "test"]) == 2
    assert "no split 'test'" in capsys.readouterr().err
    assert data_main(["check", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.e2e
def test_data_check_through_the_console_script(shapes, tmp_path):
    env = {**os.environ, "DETRKIT_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "detrkit", "data", "check", str(shapes.root), "--split", "val"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "split val (coco)" in result.stdout and "problems: none" in result.stdout


def test_large_sources_are_built_in_a_child_process(shapes, monkeypatch, tmp_path):
    monkeypatch.setattr(cache, "FORK_BUILD_BYTES", 0)
    log = tmp_path / "built-in-pids"
    original = coco._check_coco

    def spy(*args):
        with open(log, "a") as out:  # a file: the child's memory is not this process's
            out.write(f"{os.getpid()}\n")
        return original(*args)

    monkeypatch.setattr(coco, "_check_coco", spy)
    data = load_detection_data(shapes.root, split="val")
    pids = log.read_text().split()
    assert len(pids) == 1 and int(pids[0]) != os.getpid()  # parsed once, by another process
    assert data.cache_file.is_file() and len(data) == 4
    # errors found in the child are raised here, whole
    image_dir, json_file = shapes.splits["train"]
    (image_dir / "000001.png").write_bytes(b"not an image")
    with pytest.raises(InvalidDatasetError) as raised:
        load_coco(json_file, image_dir)
    assert [p.image_id for p in raised.value.problems] == [1] and "cannot decode image" in str(raised.value)
    json_file.write_text("{broken")
    with pytest.raises(InvalidDatasetError, match="cannot read the annotation file"):
        load_coco(json_file, image_dir)


def test_segmentations_survive_the_table(shapes):
    image_dir, json_file = shapes.splits["train"]
    coco = json.loads(json_file.read_text())
    polygons = [[1.5, 2.25, 10.0, 2.0, 10.0, 12.125], [20, 20, 30, 20, 25, 28]]  # ints stay equal as floats
    rle = {"size": [48, 48], "counts": "PPYo05M3N2O1O0O2N2N"}  # compressed RLE: kept as JSON
    coco["annotations"][0]["segmentation"] = polygons
    coco["annotations"][1]["segmentation"] = rle
    coco["annotations"][1]["iscrowd"] = 1
    coco["annotations"][2].pop("segmentation", None)
    json_file.write_text(json.dumps(coco))
    data = load_coco(json_file, image_dir)
    by_id = {a["id"]: a for r in data for a in r.annotations}
    assert by_id[coco["annotations"][0]["id"]]["segmentation"] == polygons
    assert by_id[coco["annotations"][1]["id"]]["segmentation"] == rle
    assert "segmentation" not in by_id[coco["annotations"][2]["id"]]
    assert not data.records.get(0, segmentation=False).annotations[0].get("segmentation")


def test_an_edit_of_the_same_size_right_after_a_load_is_seen(shapes):
    image_dir, json_file = shapes.splits["val"]
    stat = json_file.stat()
    before = load_coco(json_file, image_dir)
    text = json_file.read_text()
    coco = json.loads(text)
    old_name = coco["categories"][0]["name"]
    coco["categories"][0]["name"] = old_name[::-1]  # same length: same size
    json_file.write_text(json.dumps(coco))
    os.utime(json_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and, as a coarse clock may leave it, same mtime
    assert json_file.stat().st_size == stat.st_size and json_file.stat().st_mtime_ns == stat.st_mtime_ns
    after = load_coco(json_file, image_dir)
    assert before.categories.names[0] == old_name and after.categories.names[0] == old_name[::-1]


def test_concurrent_first_loads_build_once(shapes, monkeypatch, tmp_path):
    # ranks of a distributed run load at the same moment: one parses, the others wait and map its cache
    import threading
    import time

    calls = []
    original = coco._check_coco

    def slow(*args):
        calls.append(threading.get_ident())
        time.sleep(0.5)
        return original(*args)

    monkeypatch.setattr(coco, "_check_coco", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(load_detection_data(shapes.root, split="val")))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 3
    assert len({r.cache_file for r in results}) == 1 and all(len(r) == 4 for r in results)
