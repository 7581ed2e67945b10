"""Loaders for the three input layouts, on tiny generated data, including every kind of malformed record."""
import io
import json
import logging
import math
import shutil

import datasets
import pytest
from PIL import Image

from detrkit.data.builtin.shapes import write_builtin_dataset
from detrkit.data.coco import load_coco
from detrkit.data.hf_datasets import load_hf_dataset
from detrkit.data.imagefolder import load_imagefolder
from detrkit.data.layouts import load_detection_data
from detrkit.data.problems import InvalidDatasetError
from detrkit.data.records import Categories


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_builtin_dataset("shapes-b", tmp_path_factory.mktemp("shapes-b"), num_train=12, num_val=3,
                                 image_size=64, seed=1)


@pytest.fixture
def coco_copy(shapes, tmp_path):
    """A writable copy of the train split: (image_dir, coco dict, annotation path)."""
    image_dir = tmp_path / "images"
    shutil.copytree(shapes.splits["train"][0], image_dir)
    coco = json.loads(shapes.splits["train"][1].read_text())
    return image_dir, coco, tmp_path / "instances.json"


def first_annotation(coco, image_id):
    return next(a for a in coco["annotations"] if a["image_id"] == image_id)


def problems_by_image(error_or_data):
    found = {}
    for problem in error_or_data.problems:
        found.setdefault(problem.image_id, []).append(problem.message)
    return found


def test_coco_folder_loads_clean_data(shapes):
    data = load_detection_data(shapes.root, split="val")
    coco = json.loads(shapes.splits["val"][1].read_text())
    assert len(data) == 3 and not data.problems
    assert data.id2label == shapes.id2label == {0: "ring", 1: "hexagon", 2: "arrow", 3: "heart", 4: "crescent"}
    assert data.label2id["arrow"] == 2
    record = data[0]
    expected = [a for a in coco["annotations"] if a["image_id"] == record.image_id]
    assert [a["bbox"] for a in record.annotations] == [a["bbox"] for a in expected]
    # COCO ids 1..5 -> labels 0..4
    assert [a["category_id"] for a in record.annotations] == [a["category_id"] - 1 for a in expected]
    assert record.target() == {"image_id": record.image_id, "annotations": record.annotations}


def test_sparse_category_ids_map_to_contiguous_labels(coco_copy):
    image_dir, coco, path = coco_copy
    sparse = {1: 7, 2: 3, 3: 90, 4: 12, 5: 55}  # sparse and out of order
    for c in coco["categories"]:
        c["id"] = sparse[c["id"]]
    for a in coco["annotations"]:
        a["category_id"] = sparse[a["category_id"]]
    path.write_text(json.dumps(coco))
    data = load_coco(path, image_dir)
    assert data.categories.original_ids == (3, 7, 12, 55, 90)
    assert data.id2label == {0: "hexagon", 1: "ring", 2: "heart", 3: "crescent", 4: "arrow"}
    for record in data:
        for ann in record.annotations:
            original = next(a for a in coco["annotations"] if a["id"] == ann["id"])
            assert data.categories.to_original_id(ann["category_id"]) == original["category_id"]


def test_coco_reports_every_bad_record_with_its_image_id(coco_copy, caplog):
    image_dir, coco, path = coco_copy
    files = {img["id"]: image_dir / img["file_name"] for img in coco["images"]}
    files[0].unlink()  # missing file
    png = files[1].read_bytes()
    files[1].write_bytes(png[: len(png) // 2])  # truncated
    files[2].write_bytes(b"this is not an image")  # undecodable
    first_annotation(coco, 3)["bbox"][0] = 100.0  # outside the 64x64 image: no problem, the box rule drops it
    first_annotation(coco, 4)["bbox"][2] = -5.0  # negative size
    first_annotation(coco, 5)["bbox"][1] = float("nan")
    first_annotation(coco, 6)["category_id"] = 999  # unknown category
    del first_annotation(coco, 7)["bbox"]  # missing fields
    del first_annotation(coco, 8)["category_id"]
    coco["images"][9]["width"] = 50  # declared size differs from the file
    coco["annotations"].append({"id": 10_000, "image_id": 77, "bbox": [1, 1, 5, 5], "category_id": 1})  # orphan
    path.write_text(json.dumps(coco))

    expected = {0: "not found", 1: "cannot decode", 2: "cannot decode",
                4: "negative width or height", 5: "NaN", 6: "unknown category 999", 7: "missing field(s) ['bbox']",
                8: "missing field(s) ['category_id']", 9: "declared size 50x64", 77: "missing from 'images'"}
    with pytest.raises(InvalidDatasetError) as raised:
        load_coco(path, image_dir, on_error="raise", check_images="decode")  # the truncated file needs a decode
    found = problems_by_image(raised.value)
    assert set(found) == set(expected)
    for image_id, text in expected.items():
        assert any(text in m for m in found[image_id]), (image_id, found[image_id])
        assert f"image {image_id}:" in str(raised.value)

    with caplog.at_level(logging.WARNING):
        data = load_coco(path, image_dir, on_error="skip", check_images="decode")
    assert sorted(r.image_id for r in data) == [3, 10, 11]
    assert problems_by_image(data).keys() == expected.keys()
    assert data.num_skipped == 9  # the orphan annotation is reported but is no image
    assert "left out 9 of 12 images" in caplog.text and "image 6: annotation" in caplog.text
    assert [p.image_id for p in data.boxes.dropped] == [3] and "image 3: annotation" in caplog.text
    assert "lies entirely outside the 64x64" in str(data.boxes.dropped[0])


def test_header_checks_do_not_decode(coco_copy):
    image_dir, coco, path = coco_copy
    png = (image_dir / "000001.png").read_bytes()
    (image_dir / "000001.png").write_bytes(png[: len(png) // 2])  # the header is intact, the pixels are not
    path.write_text(json.dumps(coco))
    assert len(load_coco(path, image_dir)) == 12  # left to the DataLoader, which skips it when decoding fails
    with pytest.raises(InvalidDatasetError, match="image 1: cannot decode image"):
        load_coco(path, image_dir, check_images="decode")


def test_boxes_crossing_the_edge_are_clipped_not_rejected(coco_copy):
    image_dir, coco, path = coco_copy
    first_annotation(coco, 0)["bbox"] = [-0.5, 10.0, 64.9, 5.0]
    first_annotation(coco, 1)["bbox"] = [30.0, 40.0, 50.0, 50.0]  # far past the right and bottom edges
    path.write_text(json.dumps(coco))
    data = load_coco(path, image_dir)
    records = {r.image_id: r for r in data}
    assert records[0].annotations[0]["bbox"] == [0.0, 10.0, 64.0, 5.0]
    assert records[1].annotations[0]["bbox"] == [30.0, 40.0, 34.0, 24.0]
    assert (data.boxes.clipped, data.boxes.clipped_images, data.boxes.dropped) == (2, 2, [])


def test_on_error_must_be_skip_or_raise(shapes):
    with pytest.raises(ValueError, match="on_error"):
        load_coco(shapes.splits["val"][1], shapes.splits["val"][0], on_error="ignore")


def cppe5_style(shapes, split="train"):
    """A `datasets.Dataset` in the cppe-5 Hub layout built from the generated COCO split."""
    image_dir, ann_file = shapes.splits[split]
    coco = json.loads(ann_file.read_text())
    names = [c["name"] for c in coco["categories"]]
    rows = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
    for img in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        rows["image"].append(str(image_dir / img["file_name"]))
        rows["image_id"].append(img["id"])
        rows["width"].append(img["width"])
        rows["height"].append(img["height"])
        rows["objects"].append({"id": [a["id"] for a in anns], "area": [a["area"] for a in anns],
                                "bbox": [a["bbox"] for a in anns], "category": [a["category_id"] - 1 for a in anns]})
    features = datasets.Features({
        "image": datasets.Image(), "image_id": datasets.Value("int64"), "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "objects": datasets.Sequence({"id": datasets.Value("int64"), "area": datasets.Value("float64"),
                                      "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                                      "category": datasets.ClassLabel(names=names)}),
    })
    return datasets.Dataset.from_dict(rows, features=features), coco


def test_hf_dataset_cppe5_layout(shapes):
    dataset, coco = cppe5_style(shapes, "val")
    data = load_hf_dataset(dataset)
    assert data.id2label == shapes.id2label and not data.problems
    reference = load_detection_data(shapes.root, split="val")
    for ours, theirs in zip(data, reference):
        assert ours.image_id == theirs.image_id
        assert [a["category_id"] for a in ours.annotations] == [a["category_id"] for a in theirs.annotations]
        for a, b in zip(ours.annotations, theirs.annotations):
            assert a["bbox"] == pytest.approx(b["bbox"])  # stored as float32 in the dataset
    # through the dispatcher, from a DatasetDict
    via_dict = load_detection_data(datasets.DatasetDict({"validation": dataset}), split="validation")
    assert len(via_dict) == len(data)


def test_hf_dataset_bad_records(shapes):
    dataset, coco = cppe5_style(shapes)
    dataset = dataset.cast_column("image", datasets.Image(decode=False))

    def corrupt(row, index):
        if index == 0:
            row["image"] = {"bytes": b"garbage", "path": None}
        if index == 1:
            row["objects"]["bbox"][0] = [60.0, 60.0, 30.0, 30.0]
        if index == 2:
            row["objects"]["bbox"][0] = [1.0, 1.0, 0.0, 3.0]
        return row

    dataset = dataset.map(corrupt, with_indices=True)
    with pytest.raises(InvalidDatasetError) as raised:
        load_hf_dataset(dataset)
    found = problems_by_image(raised.value)
    assert set(found) == {0} and "cannot decode" in found[0][0]  # crossing or zero-size boxes are no problem:
    data = load_hf_dataset(dataset, on_error="skip")
    assert len(data) == 11 and data.num_skipped == 1
    assert (data.boxes.clipped, data.boxes.clipped_images) == (1, 1)  # the box rule clips the first
    assert [str(p) for p in data.boxes.dropped] == [  # and drops the second
        "image 2: annotation 9: 'bbox' [1.0, 1.0, 0.0, 3.0] has zero width or height: dropped"]


def write_imagefolder(shapes, folder, categories_key="category"):
    image_dir, ann_file = shapes.splits["train"]
    coco = json.loads(ann_file.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    folder.mkdir()
    lines = []
    for img in coco["images"][:6]:
        shutil.copy(image_dir / img["file_name"], folder / img["file_name"])
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        lines.append({"file_name": img["file_name"], "image_id": img["id"],
                      "objects": {"bbox": [a["bbox"] for a in anns],
                                  categories_key: [names[a["category_id"]] for a in anns]}})
    return lines


def test_imagefolder_names_from_data(shapes, tmp_path):
    folder = tmp_path / "folder"
    lines = write_imagefolder(shapes, folder, categories_key="categories")
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    data = load_detection_data(folder)
    names = sorted({n for line in lines for n in line["objects"]["categories"]})
    assert data.categories.names == tuple(names)
    for record, line in zip(data, lines):
        assert [data.id2label[a["category_id"]] for a in record.annotations] == line["objects"]["categories"]
        assert [a["area"] for a in record.annotations] == [b[2] * b[3] for b in line["objects"]["bbox"]]


def test_imagefolder_bad_records(shapes, tmp_path):
    folder = tmp_path / "folder"
    lines = write_imagefolder(shapes, folder)
    del lines[0]["file_name"]
    lines[1]["file_name"] = "nowhere.png"
    lines[2]["objects"]["category"][0] = "unicorn"
    lines[3]["objects"]["bbox"][0] = [1.0, 1.0, 2.0]
    lines[4]["objects"]["category"] = lines[4]["objects"]["category"][:0]  # one category list too short
    text = [json.dumps(line) for line in lines] + ["{not json"]
    (folder / "metadata.jsonl").write_text("\n".join(text))
    class_names = ["ring", "hexagon", "arrow", "heart", "crescent"]
    with pytest.raises(InvalidDatasetError) as raised:
        load_imagefolder(folder, class_names=class_names)
    found = problems_by_image(raised.value)
    ids = [line["image_id"] for line in lines]
    assert set(found) == {ids[0], ids[1], ids[2], ids[3], ids[4], "line 7"}
    assert "file_name" in found[ids[0]][0] and "not found" in found[ids[1]][0]
    assert "unknown category 'unicorn'" in found[ids[2]][0] and "must be 4 numbers" in found[ids[3]][0]
    assert "one entry per bbox" in found[ids[4]][0] and "invalid JSON" in found["line 7"][0]
    data = load_imagefolder(folder, class_names=class_names, on_error="skip")
    assert [r.image_id for r in data] == [ids[5]] and data.num_skipped == 6


def test_open_image_fails_on_truncated_png_but_header_size_does_not(tmp_path, shapes):
    png = (shapes.splits["val"][0] / "000000.png").read_bytes()
    truncated = Image.open(io.BytesIO(png[: len(png) // 2]))
    assert truncated.size == (64, 64)  # the header alone looks fine: check_images='decode' or the DataLoader finds it
    with pytest.raises(OSError):
        truncated.load()


def test_categories_helpers():
    cats = Categories.from_coco([{"id": 9, "name": "b"}, {"id": 2, "name": "a"}])
    assert cats.id2label == {0: "a", 1: "b"} and cats.label2id == {"a": 0, "b": 1}
    assert cats.to_original_id(1) == 9 and len(cats) == 2
    assert cats.to_coco() == [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]
    with pytest.raises(ValueError, match="duplicate"):
        Categories.from_names(["a", "a"])
    assert math.isclose(len(Categories.from_names("xyz")), 3)


def test_dispatcher_finds_each_layout(shapes, tmp_path):
    roboflow = tmp_path / "export" / "valid"
    shutil.copytree(shapes.splits["val"][0], roboflow)
    shutil.copy(shapes.splits["val"][1], roboflow / "_annotations.coco.json")
    data = load_detection_data(tmp_path / "export", split="valid")
    assert len(data) == 3 and data.id2label == shapes.id2label
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cannot tell the layout"):
        load_detection_data(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_detection_data(tmp_path / "nothing-here")


def test_xyxy_boxes_are_converted(shapes, tmp_path):
    folder = tmp_path / "folder"
    lines = write_imagefolder(shapes, folder)
    for line in lines:
        line["objects"]["bbox"] = [[x, y, x + w, y + h] for x, y, w, h in line["objects"]["bbox"]]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    xyxy = load_imagefolder(folder, bbox_format="xyxy")
    reference = load_detection_data(shapes.root, split="train")
    for ours, theirs in zip(xyxy, reference):
        assert [a["bbox"] for a in ours.annotations] == [a["bbox"] for a in theirs.annotations]  # whole pixels


def test_exif_orientation_is_applied_like_datasets_and_the_processor(tmp_path):
    from detrkit.data.images import open_image

    raw = Image.new("RGB", (40, 20), (255, 0, 0))
    raw.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left of the stored pixels
    exif = raw.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "rotated.jpg"
    raw.save(path, exif=exif, quality=95)
    upright = open_image(path)
    assert upright.size == (20, 40) and upright.getpixel((10, 2))[2] > 200  # blue now on top
    assert upright.getexif().get(0x0112, 1) == 1
    (tmp_path / "metadata.jsonl").write_text(json.dumps(
        {"file_name": "rotated.jpg", "width": 20, "height": 40, "objects": {"bbox": [[0, 0, 20, 10]], "category": ["a"]}}))
    data = load_imagefolder(tmp_path)
    assert (data[0].width, data[0].height) == (20, 40) and not data.problems


def test_malformed_entries_are_problems_not_crashes(coco_copy):
    image_dir, coco, path = coco_copy
    coco["images"][0]["id"] = [0]  # unhashable
    coco["images"][1]["file_name"] = None
    coco["annotations"][0]["image_id"] = {"id": 3}
    coco["annotations"].append("not an annotation")
    path.write_text(json.dumps(coco))
    with pytest.raises(InvalidDatasetError) as raised:
        load_coco(path, image_dir)
    text = str(raised.value)
    assert "image #0: image entry lacks an 'id' or a 'file_name'" in text
    assert "image 1: image entry lacks" in text
    assert "refers to an image id missing from 'images' ({'id': 3})" in text
    assert "annotation entry 'not an annotation'" in text
