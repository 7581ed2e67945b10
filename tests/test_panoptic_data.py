"""Built-in panoptic shapes (COCO panoptic files), the COCO panoptic loader and dataset, and that the detection
sets shapes-a / shapes-b did not change (the demo's figures depend on their images)."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from detrkit.data.builtin.shape_drawing import draw_image
from detrkit.data.builtin.panoptic_shapes import write_builtin_panoptic_dataset
from detrkit.data.coco_panoptic import load_coco_panoptic
from detrkit.data.collator import DetectionCollator
from detrkit.data.panoptic_dataset import PanopticDataset
from detrkit.data.panoptic_records import InvalidPanopticDataError
from detrkit.metrics.panoptic import PanopticQuality
from detrkit.processing import DetrImageProcessor
from detrkit.processing.segmentation_annotations import rgb_to_id

# sha256 of shapes-a and shapes-b images 0-4 of both splits (seed 0, 128 px) with their class ids and masks, as
# the demo checkpoint's data was drawn (numpy 2 / Pillow 11 rasterization).
DETECTION_SETS_SHA256 = "5faec554023e2e985e69a639521c92e4df0ddfd1870cdaf2d433bcdeac56529b"


def test_detection_sets_unchanged():
    digest = hashlib.sha256()
    for name in ("shapes-a", "shapes-b"):
        for split in range(2):
            for i in range(5):
                pixels, objects = draw_image(name, 128, np.random.default_rng([0, split, i]))
                digest.update(pixels.tobytes())
                for category, mask in objects:
                    digest.update(bytes([category]) + np.packbits(mask).tobytes())
    assert digest.hexdigest() == DETECTION_SETS_SHA256


@pytest.fixture(scope="module")
def panoptic_set(tmp_path_factory):
    return write_builtin_panoptic_dataset("shapes-b-panoptic", tmp_path_factory.mktemp("pan"), num_train=6,
                                          num_val=4, image_size=96)


def test_files_are_consistent_coco_panoptic(panoptic_set):
    image_dir, annotation_file, png_dir = panoptic_set.splits["train"]
    coco = json.loads(annotation_file.read_text())
    assert [c["isthing"] for c in coco["categories"]] == [1] * 5 + [0] * 3
    stuff_seen = set()
    for annotation in coco["annotations"]:
        ids = rgb_to_id(np.asarray(Image.open(png_dir / annotation["file_name"])))
        assert Image.open(image_dir / annotation["file_name"]).size == (96, 96)
        segments = {s["id"]: s for s in annotation["segments_info"]}
        assert set(np.unique(ids).tolist()) - {0} == set(segments)
        for segment_id, segment in segments.items():
            ys, xs = np.nonzero(ids == segment_id)
            assert segment["area"] == len(ys)
            assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        categories = [s["category_id"] for s in segments.values()]
        assert len([c for c in categories if c > 5]) == len({c for c in categories if c > 5})  # one per stuff
        assert any(c <= 5 for c in categories)
        stuff_seen |= {c for c in categories if c > 5}
        assert (ids == 0).mean() < 0.02  # VOID only where a band's leftover is tiny
    assert stuff_seen == {6, 7, 8}


def test_deterministic_and_reused(panoptic_set, tmp_path):
    again = write_builtin_panoptic_dataset("shapes-b-panoptic", tmp_path, num_train=6, num_val=4, image_size=96)
    for split in ("train", "val"):
        for a, b in zip(panoptic_set.splits[split], again.splits[split]):
            files = sorted(a.iterdir()) if a.is_dir() else [a]
            for f in files:
                assert f.read_bytes() == (b / f.name if b.is_dir() else b).read_bytes()
    mtime = again.splits["val"][1].stat().st_mtime_ns
    write_builtin_panoptic_dataset("shapes-b-panoptic", tmp_path, num_train=6, num_val=4, image_size=96)
    assert again.splits["val"][1].stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="unknown built-in panoptic dataset"):
        write_builtin_panoptic_dataset("shapes-c-panoptic", tmp_path)


def test_loader_dataset_and_ground_truth_pq(panoptic_set):
    data = load_coco_panoptic(panoptic_set.root, "val")
    assert len(data) == 4 and data.stuff_label_ids == {5, 6, 7} == panoptic_set.stuff_label_ids
    assert data.id2label == panoptic_set.id2label
    dataset = PanopticDataset(data, DetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 96}))
    batch = DetectionCollator(dataset.processor)([dataset[i] for i in range(len(dataset))])
    metric = PanopticQuality(data.categories)
    for record, labels in zip(data.records, batch["labels"]):
        assert labels["masks"].shape[1:] == batch["pixel_values"].shape[-2:]
        assert not (labels["masks"].sum(0) > 1).any()  # panoptic: no pixel in two segments
        # The labels' masks rebuild the PNG's map (contiguous labels mapped back to categories).
        ids = torch.zeros(labels["masks"].shape[1:], dtype=torch.int64)
        segments = []
        for k, (mask, label) in enumerate(zip(labels["masks"], labels["class_labels"].tolist())):
            ids[mask] = k + 1
            segments.append({"id": k + 1, "category_id": data.label2category[label]})
        gt = rgb_to_id(np.asarray(Image.open(record.panoptic_png)))
        metric.update(gt, record.segments_info, ids.numpy(), segments)
    assert metric.compute()["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 8}


def test_loader_names_bad_records(panoptic_set, tmp_path):
    image_dir, annotation_file, png_dir = panoptic_set.splits["val"]
    coco = json.loads(annotation_file.read_text())
    coco["annotations"][1]["file_name"] = "missing.png"
    coco["annotations"][2]["segments_info"][0]["category_id"] = 42
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    with pytest.raises(InvalidPanopticDataError, match=r"2 of 4 annotations unusable:\n  image 1: panoptic PNG not "
                                                       r"found: .*missing.png\n  image 2: unknown category_id 42"):
        load_coco_panoptic(panoptic_set.root, annotation_file=bad, masks_dir=png_dir, image_dir=image_dir)
    with pytest.raises(InvalidPanopticDataError, match="no panoptic annotation file for split 'test'"):
        load_coco_panoptic(panoptic_set.root, "test")


def test_datasets_tables_panoptic_and_semantic(panoptic_set):
    """A `datasets` table with the panoptic PNG as an image column + segments_info gives the same labels as the
    COCO folder; a semantic-map column gives one segment per class present, ignore_index as VOID."""
    import datasets

    from detrkit.data.hf_panoptic import load_hf_panoptic

    folder = load_coco_panoptic(panoptic_set.root, "val")
    table = datasets.Dataset.from_dict({
        "image": [str(r.image) for r in folder.records], "label": [str(r.panoptic_png) for r in folder.records],
        "segments_info": [r.segments_info for r in folder.records], "image_id": [r.image_id for r in folder.records],
    }).cast_column("image", datasets.Image()).cast_column("label", datasets.Image())
    processor = DetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 96})
    from_table = PanopticDataset(load_hf_panoptic(table, panoptic_set.categories), processor)
    from_folder = PanopticDataset(folder, processor)
    for i in range(len(folder)):
        a, b = from_table[i]["labels"], from_folder[i]["labels"]
        assert all(torch.equal(a[k], b[k]) for k in ("masks", "class_labels", "boxes", "image_id"))

    semantic = np.zeros((40, 50), np.uint8)
    semantic[20:] = 2
    semantic[:5] = 255
    image = Image.fromarray(np.zeros((40, 50, 3), np.uint8))
    table = datasets.Dataset.from_dict({"image": [image], "annotation": [Image.fromarray(semantic)]})
    categories = [{"id": 0, "name": "sky", "isthing": 0}, {"id": 2, "name": "ground", "isthing": 0}]
    data = load_hf_panoptic(table, categories, map_column="annotation", segments_column=None)
    labels = PanopticDataset(data, processor, do_resize=False)[0]["labels"]
    assert labels["class_labels"].tolist() == [0, 1]  # contiguous: category 2 is label 1
    assert labels["masks"].sum((1, 2)).tolist() == [15 * 50, 20 * 50]
    with pytest.raises(InvalidPanopticDataError, match="no column 'segments_info'"):
        load_hf_panoptic(table, categories, map_column="annotation")


def test_augment_flips_image_and_map_together(panoptic_set):
    from detrkit.data.panoptic_dataset import horizontal_flip

    data = load_coco_panoptic(panoptic_set.root, "val")
    processor = DetrImageProcessor(do_resize=False, do_normalize=False, do_rescale=False)
    plain = PanopticDataset(data, processor, do_resize=False)
    flipped = PanopticDataset(data, processor, do_resize=False, augment=horizontal_flip(1.0))
    for i in range(len(data)):
        a, b = plain[i], flipped[i]
        assert torch.equal(b["pixel_values"], a["pixel_values"].flip(-1))
        assert torch.equal(b["labels"]["masks"], a["labels"]["masks"].flip(-1))
        assert torch.equal(b["labels"]["class_labels"], a["labels"]["class_labels"])
        width = a["labels"]["masks"].shape[-1]
        # normalized (cx, cy, w, h): cx mirrors; DETR's last-pixel boxes shift by one pixel's width
        torch.testing.assert_close(b["labels"]["boxes"][:, 0], 1 - a["labels"]["boxes"][:, 0] - 1 / width)
    coin = PanopticDataset(data, processor, do_resize=False, augment=horizontal_flip(0.5), seed=3)
    draws = []
    for epoch in (0, 0, 1, 2, 3):
        coin.set_epoch(epoch)
        draws.append([torch.equal(coin[i]["pixel_values"], plain[i]["pixel_values"]) for i in range(len(data))])
    assert draws[0] == draws[1] and len({tuple(d) for d in draws}) > 1  # fixed per (seed, epoch, index)
