"""Every layout on a tiny generated set: COCO (three placements of the json), YOLO (ultralytics and Roboflow),
Pascal VOC, datasets (save_to_disk folder, Hub ids), imagefolder; split discovery; the data's own category ids.

One ground truth (non-square images, whole-pixel boxes, sparse category ids) is written in each layout by the
writers in helpers.py, which follow each format's own specification, then read back and compared with the truth."""
import json
import shutil

import datasets
import pytest
from helpers import CATEGORIES, TRUTH, write_coco, write_image, write_voc, yolo_line
from PIL import Image
from pycocotools.coco import COCO

from detrkit.data.layouts import SplitNotFoundError, discover_splits, load_detection_data, split_names
from detrkit.data.problems import InvalidDatasetError


def check_against_truth(data, split, original_ids=True):
    """Records == TRUTH[split], category ids and names as the data has them."""
    assert len(data) == len(TRUTH[split]) and not data.problems
    names = {c["id"]: c["name"] for c in CATEGORIES}
    for record, (width, height, boxes) in zip(data, TRUTH[split]):
        assert (record.width, record.height) == (width, height)
        got = [v for a in record.annotations for v in a["bbox"]]
        assert got == pytest.approx([v for b in boxes for v in b[:4]], abs=1e-4)  # YOLO's text floats round
        labels = [a["category_id"] for a in record.annotations]
        got_names = [data.categories.names[label] for label in labels]
        assert got_names == [names[b[4]] for b in boxes]
        if original_ids:
            assert [data.categories.to_original_id(label) for label in labels] == [b[4] for b in boxes]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETRKIT_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("placement", ["annotations", "beside", "roboflow"])
def test_coco_layouts_match_pycocotools(tmp_path, placement):
    root = write_coco(tmp_path / "coco", placement)
    assert set(discover_splits(root)) == {"train", "valid"}
    for split in TRUTH:
        data = load_detection_data(root, split=split)
        check_against_truth(data, split)
        assert data.layout == "coco" and data.categories.original_ids == (3, 7, 42)
        json_file = next(root.rglob(f"*{split}.json")) if placement != "roboflow" else \
            root / split / "_annotations.coco.json"
        reference = COCO(str(json_file))
        for record in data:
            theirs = reference.loadAnns(reference.getAnnIds(imgIds=[record.image_id]))
            assert [a["bbox"] for a in record.annotations] == [a["bbox"] for a in theirs]
            assert [data.categories.to_original_id(a["category_id"]) for a in record.annotations] == \
                [a["category_id"] for a in theirs]


def test_split_names_are_found_by_their_usual_spellings(tmp_path):
    root = write_coco(tmp_path / "coco", "annotations")
    for asked in ("val", "validation", "val2017", "VALID"):
        assert len(load_detection_data(root, split=asked)) == len(TRUTH["valid"])
    assert split_names("train") == ["train", "train2017", "training"]
    with pytest.raises(SplitNotFoundError, match=r"no split 'test'.*splits there: train, valid"):
        load_detection_data(root, split="test")


def test_coco_json_beside_its_split_folder_is_the_issue_layout(tmp_path):
    # a COCO export with instances_train.json next to train/ (issue 10: "cannot tell the layout" before)
    root = write_coco(tmp_path / "export", "beside")
    assert not (root / "annotations").exists()
    check_against_truth(load_detection_data(root, split="train"), "train")


@pytest.mark.parametrize("style", ["ultralytics", "roboflow"])
def test_yolo(tmp_path, style):
    root = tmp_path / "yolo"
    order = [c["id"] for c in CATEGORIES]
    for split, key in (("train", "train"), ("valid", "val")):
        images = root / "images" / key if style == "ultralytics" else root / split / "images"
        for i, (width, height, boxes) in enumerate(TRUTH[split]):
            write_image(images / f"{i}.png", width, height)
            labels = images.parent.parent / "labels" / key if style == "ultralytics" else images.parent / "labels"
            labels.mkdir(parents=True, exist_ok=True)
            # an image without boxes has no label file (as ultralytics writes it) or an empty one (as Roboflow does)
            if boxes or style == "roboflow":
                (labels / f"{i}.txt").write_text("\n".join(yolo_line(b, width, height, order) for b in boxes))
    names = [c["name"] for c in CATEGORIES]
    if style == "ultralytics":
        spec = {"path": ".", "train": "images/train", "val": "images/val", "names": dict(enumerate(names))}
    else:
        spec = {"train": "../train/images", "val": "../valid/images", "nc": 3, "names": names}
    (root / "data.yaml").write_text(json.dumps(spec))  # JSON is YAML
    for split in ("train", "valid"):
        data = load_detection_data(root, split=split)
        check_against_truth(data, split, original_ids=False)
        assert data.layout == "yolo" and data.categories.original_ids == (0, 1, 2)  # YOLO's ids are the indices
    check_against_truth(load_detection_data(root / "data.yaml", split="val"), "valid", original_ids=False)


def test_yolo_bad_labels_name_file_and_line(tmp_path):
    root = tmp_path / "yolo"
    for i in range(3):
        write_image(root / "images" / "train" / f"{i}.png", 40, 20)
    labels = root / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "0.txt").write_text("0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.1 0.1")  # class 5 of 2
    (labels / "1.txt").write_text("0 12 8 4 4")  # pixels, not normalized
    (labels / "2.txt").write_text("0 0.1 0.1 0.05 0.05 0.2 0.3")  # a polygon: boxed by its extent
    write_image(root / "images" / "train" / "3.png", 40, 20)
    (labels / "3.txt").write_bytes(b"\xff\xfe0 0.5")  # not text
    (root / "data.yaml").write_text("train: images/train\nnames: [a, b]\n")
    with pytest.raises(InvalidDatasetError) as raised:
        load_detection_data(root)
    text = str(raised.value)
    assert "0.txt line 2" in text and "class 5 is not in data.yaml's 2 names" in text
    assert "1.txt line 1" in text and "normalized" in text and "cannot read" in text and "3.txt" in text
    data = load_detection_data(root, on_error="skip")
    assert len(data) == 1 and data[0].annotations[0]["bbox"] == pytest.approx([0.05 * 40, 0.05 * 20, 0.15 * 40, 0.25 * 20])


def test_pascal_voc(tmp_path):
    from torchvision.datasets import VOCDetection

    base = write_voc(tmp_path / "voc", difficult_first=True)
    (base / "ImageSets" / "Main" / "cat_train.txt").write_text("train_0000  1\n")  # a per-class list, no split
    assert set(discover_splits(tmp_path / "voc")) == {"train", "valid"}
    data = load_detection_data(tmp_path / "voc", split="train")
    assert data.layout == "voc" and data.categories.names == ("cat", "dog", "zebra")  # not VOC's 20: sorted
    assert [[a["bbox"] for a in r.annotations] for r in data] == \
        [[list(b[:4]) for b in boxes] for _, _, boxes in TRUTH["train"]]
    assert [a["iscrowd"] for a in data[0].annotations] == [1, 0]  # difficult
    # torchvision reads the same files: same objects, corners minus one on the top left
    reference = VOCDetection(str(tmp_path / "voc"), year="2012", image_set="train")
    for record, (image, target) in zip(data, reference):
        assert image.size == (record.width, record.height)
        corners = [[float(o["bndbox"][k]) for k in ("xmin", "ymin", "xmax", "ymax")] for o in target["annotation"]["object"]]
        assert [a["bbox"] for a in record.annotations] == [[x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1]
                                                           for x0, y0, x1, y1 in corners]
    with pytest.raises(SplitNotFoundError, match="splits there: train, valid"):
        load_detection_data(base, split="test")


def hf_dataset(split):
    names = [c["name"] for c in CATEGORIES]
    label = {c["id"]: i for i, c in enumerate(CATEGORIES)}
    rows = {"image": [], "image_id": [], "objects": []}
    for i, (width, height, boxes) in enumerate(TRUTH[split]):
        rows["image"].append(Image.new("RGB", (width, height)))
        rows["image_id"].append(i)
        rows["objects"].append({"bbox": [list(b[:4]) for b in boxes], "category": [label[b[4]] for b in boxes]})
    features = datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("int64"),
                                  "objects": datasets.Sequence({"bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                                                                "category": datasets.ClassLabel(names=names)})})
    return datasets.Dataset.from_dict(rows, features=features)


def test_datasets_save_to_disk_folder_and_hub_ids(tmp_path, monkeypatch):
    dataset_dict = datasets.DatasetDict({"train": hf_dataset("train"), "validation": hf_dataset("valid")})
    dataset_dict.save_to_disk(str(tmp_path / "saved"))
    data = load_detection_data(tmp_path / "saved", split="val")
    check_against_truth(data, "valid", original_ids=False)
    assert data.layout == "datasets"
    asked = []

    def fake_load_dataset(name, *args, **kwargs):  # the Hub is out of reach: the call is what is tested
        asked.append(name)
        return dataset_dict

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    for hub_id in ("someone/cppe-5", "cppe-5"):
        check_against_truth(load_detection_data(hub_id, split="train"), "train", original_ids=False)
    assert asked == ["someone/cppe-5", "cppe-5"]

    def offline(name, *args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="no such file or folder, and loading it as a Hub dataset failed"):
        load_detection_data("someone/missing")


def test_imagefolder_per_split(tmp_path):
    names = {c["id"]: c["name"] for c in CATEGORIES}
    for split in TRUTH:
        lines = []
        for i, (width, height, boxes) in enumerate(TRUTH[split]):
            write_image(tmp_path / "folder" / split / f"{i}.png", width, height)
            lines.append(json.dumps({"file_name": f"{i}.png", "image_id": i,
                                     "objects": {"bbox": [list(b[:4]) for b in boxes],
                                                 "category": [names[b[4]] for b in boxes]}}))
        (tmp_path / "folder" / split / "metadata.jsonl").write_text("\n".join(lines))
    data = load_detection_data(tmp_path / "folder", split="train")
    check_against_truth(data, "train", original_ids=False)
    assert data.layout == "imagefolder"
    assert len(load_detection_data(tmp_path / "folder", split="validation")) == 2


def test_broken_sources_name_the_file(tmp_path):
    root = write_coco(tmp_path / "coco", "annotations")
    (root / "annotations" / "instances_train.json").write_text("{not json")
    with pytest.raises(InvalidDatasetError, match=r"(?s)instances_train.json.*cannot read the annotation file"):
        load_detection_data(root, split="train")
    shutil.rmtree(root / "valid")
    with pytest.raises(InvalidDatasetError, match="image folder not found"):
        load_detection_data(root, split="valid")
