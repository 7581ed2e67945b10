"""The one box rule (detrkit.processing.box_rule), case by case and in each input format (COCO xywh, YOLO normalized
cx cy w h, VOC 1-based xyxy): `detrkit data check` reports what training's dataset then yields, from the same
report, and the image processor turns the same annotation into the boxes the rule says (as transformers' does)."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from detrkit.data.check import main as data_main
from detrkit.data.dataset import DetectionDataset
from detrkit.data.layouts import load_detection_data
from detrkit.data.sources import read_split
from detrkit.processing import DetrImageProcessor, DetrProcessingError
from detrkit.processing.box_rule import CLIPPED, INSIDE, OUTSIDE, ZERO_SIZE, apply_box_rule, parse_box

WIDTH, HEIGHT = 64, 48
NAN = float("nan")

# name, the box as corners (x0, y0, x1, y1) in pixels, and what the rule makes of it: the corners kept,
# "dropped" (left out of training, named) or "invalid" (the image is an invalid record)
CASES = [
    ("inside", (10, 8, 30, 20), (10, 8, 30, 20)),
    ("touching", (0, 0, WIDTH, HEIGHT), (0, 0, WIDTH, HEIGHT)),
    ("crossing-left", (-5, 10, 20, 30), (0, 10, 20, 30)),
    ("crossing-top", (10, -4, 20, 30), (10, 0, 20, 30)),
    ("crossing-right", (50, 10, 70, 30), (50, 10, WIDTH, 30)),
    ("crossing-bottom", (10, 40, 20, 52), (10, 40, 20, HEIGHT)),
    ("zero-width", (10, 10, 10, 20), "dropped"),
    ("zero-height", (10, 10, 20, 10), "dropped"),
    ("outside", (70, 10, 80, 20), "dropped"),
    ("negative", (20, 10, 10, 20), "invalid"),
    ("nan", (NAN, 10, 20, 20), "invalid"),
]
CROSSING = {"crossing-left", "crossing-top", "crossing-right", "crossing-bottom"}
FORMATS = ("coco", "yolo", "voc")


def expected(fmt: str, name: str, outcome):
    # YOLO's own format: coordinates beyond [0, 1] are not normalized, an invalid record (as in ultralytics)
    return "invalid" if fmt == "yolo" and name == "outside" else outcome


def xywh(corners):
    x0, y0, x1, y1 = corners
    return [x0, y0, x1 - x0, y1 - y0]


def write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    for name in names:
        Image.fromarray(pixels).save(folder / f"{name}.png")


def write_coco(root):
    names = [f"{i:02d}-{name}" for i, (name, _, _) in enumerate(CASES)]
    write_images(root / "train", names)
    coco = {"images": [{"id": i, "file_name": f"{n}.png", "width": WIDTH, "height": HEIGHT}
                       for i, n in enumerate(names)],
            "annotations": [{"id": 100 + i, "image_id": i, "bbox": xywh(corners), "category_id": 1, "iscrowd": 0}
                            for i, (_, corners, _) in enumerate(CASES)],
            "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))  # NaN as json writes it
    return {i: 100 + i for i in range(len(CASES))}


def write_yolo(root):
    names = [f"{i:02d}-{name}" for i, (name, _, _) in enumerate(CASES)]
    write_images(root / "images" / "train", names)
    (root / "labels" / "train").mkdir(parents=True)
    for name, (x0, y0, x1, y1) in zip(names, (c for _, c, _ in CASES)):
        line = [(x0 + x1) / 2 / WIDTH, (y0 + y1) / 2 / HEIGHT, (x1 - x0) / WIDTH, (y1 - y0) / HEIGHT]
        (root / "labels" / "train" / f"{name}.txt").write_text("0 " + " ".join(repr(v) for v in line) + "\n")
    (root / "data.yaml").write_text("names: [thing]\ntrain: images/train\n")
    return {i: 1 for i in range(len(CASES))}  # a YOLO annotation is named by its line


def write_voc(root):
    names = [f"{i:02d}-{name}" for i, (name, _, _) in enumerate(CASES)]
    write_images(root / "JPEGImages", names)
    (root / "Annotations").mkdir()
    for name, (x0, y0, x1, y1) in zip(names, (c for _, c, _ in CASES)):
        corners = "".join(f"<{k}>{v}</{k}>" for k, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1),
                                                           ("ymax", y1)))  # VOC: 1-based, inclusive
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.png</filename><size><width>{WIDTH}</width><height>{HEIGHT}</height>"
            f"</size><object><name>thing</name><difficult>0</difficult><bndbox>{corners}</bndbox></object>"
            f"</annotation>")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(names) + "\n")
    return {i: 0 for i in range(len(CASES))}


WRITERS = {"coco": write_coco, "yolo": write_yolo, "voc": write_voc}


def to_corners(labels) -> torch.Tensor:
    """The labels' normalized (cx, cy, w, h) boxes as pixel corners of the original image."""
    cx, cy, w, h = labels["boxes"].unbind(-1)
    return torch.stack([(cx - w / 2) * WIDTH, (cy - h / 2) * HEIGHT, (cx + w / 2) * WIDTH, (cy + h / 2) * HEIGHT], -1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_data_check_and_training_agree_with_the_rule(fmt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETRKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / fmt
    annotation_ids = WRITERS[fmt](root)
    outcomes = {i: expected(fmt, name, outcome) for i, (name, _, outcome) in enumerate(CASES)}

    assert data_main(["check", str(root), "--split", "train"]) == 1  # the invalid records are problems
    out = capsys.readouterr().out
    logged = []
    data = read_split(root, "train", "data", "skip", log=logged.append)  # as training reads it

    # the check prints the report training logs, line for line, from the same object
    for line in data.boxes.lines():
        assert f"  {line}\n" in out
    assert logged[1:] == [f"data: train: {line}" for line in data.boxes.lines(shown=0)]
    clipped = [i for i, (name, _, _) in enumerate(CASES) if name in CROSSING]
    assert (data.boxes.clipped, data.boxes.clipped_images) == (len(clipped), len(clipped))
    assert f"boxes clipped to the image edge: {len(clipped)} (in {len(clipped)} images)" in out
    dropped = [i for i, o in outcomes.items() if o == "dropped"]
    assert [p.image_id for p in data.boxes.dropped] == dropped
    for i in dropped:
        assert f"    - image {i}: annotation {annotation_ids[i]}: 'bbox' " in out
        assert str(data.boxes.dropped[dropped.index(i)]).endswith(": dropped")
    invalid = [i for i, o in outcomes.items() if o == "invalid"]
    assert sorted({p.image_id for p in data.problems}) == invalid and data.num_skipped == len(invalid)
    for i in invalid:
        assert f"    - image {i}: " in out

    # training's dataset yields the boxes the rule kept, and nothing else
    dataset = DetectionDataset(data, DetrImageProcessor())
    seen = {}
    for index in range(len(dataset)):
        labels = dataset[index]["labels"]
        seen[int(labels["image_id"])] = to_corners(labels)
    assert sorted(seen) == [i for i, o in outcomes.items() if o != "invalid"]
    for i, corners in seen.items():
        if outcomes[i] == "dropped":
            assert corners.shape == (0, 4), CASES[i][0]
        else:
            torch.testing.assert_close(corners, torch.tensor([outcomes[i]], dtype=torch.float32), atol=1e-4, rtol=0)


def coco_annotation(corners):
    return {"image_id": 1, "annotations": [{"bbox": xywh(corners), "category_id": 1, "area": 1.0, "iscrowd": 0}]}


@pytest.mark.parametrize("name, corners, outcome", CASES, ids=[c[0] for c in CASES])
def test_processor_follows_the_rule(name, corners, outcome):
    """The processor on the raw COCO annotation: the rule's boxes; transformers' processor agrees where it can."""
    from transformers import DetrImageProcessor as TransformersProcessor

    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    processor = DetrImageProcessor(do_resize=False)
    if outcome == "invalid":
        with pytest.raises(DetrProcessingError, match="image 0, annotation 0: 'bbox'"):
            processor(image, annotations=coco_annotation(corners))
        return
    labels = processor(image, annotations=coco_annotation(corners))["labels"][0]
    reference = TransformersProcessor(do_resize=False)(image, annotations=coco_annotation(corners),
                                                       return_tensors="pt")["labels"][0]
    assert torch.equal(labels["boxes"], reference["boxes"])  # bit for bit
    if outcome == "dropped":
        assert labels["boxes"].shape == (0, 4)
    else:
        torch.testing.assert_close(to_corners(labels), torch.tensor([outcome], dtype=torch.float32), atol=1e-4,
                                   rtol=0)


def test_rule_outcomes():
    boxes = [parse_box(xywh(c)) for _, c, o in CASES if o != "invalid"]
    corners, outcome = apply_box_rule(boxes, WIDTH, HEIGHT)
    names = [n for n, _, o in CASES if o != "invalid"]
    assert dict(zip(names, outcome.tolist())) == {
        "inside": INSIDE, "touching": INSIDE, "crossing-left": CLIPPED, "crossing-top": CLIPPED,
        "crossing-right": CLIPPED, "crossing-bottom": CLIPPED, "zero-width": ZERO_SIZE, "zero-height": ZERO_SIZE,
        "outside": OUTSIDE}
    assert corners.dtype == np.float32 and corners[2].tolist() == [0, 10, 20, 30]
    assert apply_box_rule([(0.0, 0.0, 1e-9, 5.0)], 8, 8)[1].tolist() == [INSIDE]
    assert apply_box_rule([(100.0, 0.0, 1e-6, 5.0)], 200, 8)[1].tolist() == [ZERO_SIZE]  # too thin for float32
    for bad in ([1, 2, 3], "1234", {1, 2, 3, 4}, [1, 2, -3, 4], [math.inf, 0, 1, 1], ["a", 0, 1, 1]):
        with pytest.raises(ValueError, match="'bbox'"):
            parse_box(bad)
