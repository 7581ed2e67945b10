"""Fine-tuning from a transformers-format COCO checkpoint (91 label slots with "N/A") on a COCO-layout set with
sparse category ids, then evaluate and predict on it, all through the `detrkit` command line in-process:

- evaluate maps the 91 slots to the data's categories by original id: its AP equals pycocotools' own COCOeval of
  the same detections against the original json;
- train replaces the class head, keeps EMA weights, stops early (--patience), writes a card whose YAML
  huggingface_hub reads back (model-index = metrics.json) and pushes model + processor + card (HfApi faked);
- predict takes files, folders, globs and URLs (a local http.server), keeps same-named inputs apart, and writes
  COCO results with the data's own image and category ids.
"""
import contextlib
import functools
import http.server
import io
import json
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.models._meta import _COCO_CATEGORIES

from detrkit.cli import dispatch as cli

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]  # COCO's own ids
TINY = dict(backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64,
            decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10)
RUN = ["--image-size", "64", "--batch-size", "2", "--num-workers", "0", "--report-to", "[]"]


def write_coco(root: Path, split: str, count: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        image_id = 100 * seed + 7 * index + 5  # sparse, not 0..N-1
        image = Image.new("RGB", (80, 64), (90, 90, 90))
        draw = ImageDraw.Draw(image)
        for k in range(1 + index % 2):
            x, y = [int(v) for v in torch.randint(0, 40, (2,), generator=generator)]
            w, h = [int(v) for v in torch.randint(12, 24, (2,), generator=generator)]
            category = CATEGORIES[(index + k) % 3]
            draw.rectangle([x, y, x + w, y + h], fill=(60 * (category["id"] % 4), 200, 40 * k))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category["id"],
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        image.save(root / split / f"img{index}.png")
        images.append({"id": image_id, "file_name": f"img{index}.png", "width": 80, "height": 64})
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": CATEGORIES}))


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    write_coco(root, "train", 6, seed=1)
    write_coco(root, "val", 4, seed=2)
    return root


@pytest.fixture(scope="module")
def coco_checkpoint(tmp_path_factory):
    """What transformers' own DETR classes save for a COCO model: 91 slots, "N/A" where COCO has no category."""
    import transformers

    folder = tmp_path_factory.mktemp("detr-coco")
    id2label = {i: name if i else "N/A" for i, name in enumerate(_COCO_CATEGORIES)}  # slot 0: "__background__"
    assert (id2label[1], id2label[3], id2label[18], id2label[12], len(id2label)) == ("person", "car", "dog", "N/A", 91)
    torch.manual_seed(0)
    config = transformers.DetrConfig(use_pretrained_backbone=False, id2label=id2label,
                                     label2id={v: k for k, v in id2label.items()}, **TINY)
    transformers.DetrForObjectDetection(config).save_pretrained(folder)
    transformers.DetrImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333}).save_pretrained(folder)
    return folder


def detrkit(capsys, *argv) -> str:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, (out + err)[-3000:]
    return out + err


@pytest.mark.e2e
def test_evaluate_maps_coco_slots_by_original_id(coco, coco_checkpoint, tmp_path, capsys, monkeypatch):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from detrkit.inference import coco_evaluation

    truth = json.loads((coco / "annotations" / "instances_val.json").read_text())
    # detections in the model's label space (the COCO slot = the original id): every box found but the last
    # one, the first one also once with the wrong class, so the AP is neither 0 nor 1
    detections, results = {}, []
    for n, image in enumerate(truth["images"]):
        anns = [a for a in truth["annotations"] if a["image_id"] == image["id"]]
        if n == len(truth["images"]) - 1:
            anns = anns[:-1]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        labels = [a["category_id"] for a in anns]
        if n == 0:
            boxes, labels = boxes + [boxes[0]], labels + [3 if labels[0] != 3 else 1]
        scores = [0.9 - 0.1 * k for k in range(len(boxes))]
        detections[image["id"]] = {"scores": torch.tensor(scores), "labels": torch.tensor(labels),
                                   "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)}
        results += [{"image_id": image["id"], "category_id": l, "score": s,
                     "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]} for s, l, b in zip(scores, labels, boxes)]
    monkeypatch.setattr(coco_evaluation, "predict", lambda model, batches, processor: (list(batches), detections)[1])

    output = tmp_path / "eval.json"
    log = detrkit(capsys, "evaluate", coco_checkpoint, "--data", coco, "--split", "val", "--output", output)
    assert "matched to the data's 3 categories by id" in log

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco / "annotations" / "instances_val.json"))
        reference = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    metrics = json.loads(output.read_text())
    assert 0.2 < reference.stats[0] < 0.99
    assert metrics["map"] == pytest.approx(reference.stats[0], abs=1e-9)
    assert metrics["map_50"] == pytest.approx(reference.stats[1], abs=1e-9)
    assert set(metrics["map_per_class"]) == {"person", "car", "dog"}
    counts = metrics["confusion_matrix"]["counts"]  # rows predicted, columns true; 3 classes + background
    assert len(counts) == 4 and sum(map(sum, counts)) >= len(truth["annotations"])
    for name in ("per_class_ap", "confusion_matrix", "pr_curves"):
        assert (tmp_path / f"eval_{name}.png").stat().st_size > 1000, name


class FakeHfApi:
    calls = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
        FakeHfApi.calls.append(("create_repo", repo_id, private))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, commit_message=None, repo_type=None):
        FakeHfApi.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


@contextlib.contextmanager
def serve(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
@pytest.mark.e2e
def test_fine_tune_coco_checkpoint_then_predict(coco, coco_checkpoint, tmp_path, capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub import ModelCard, metadata_load

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    out = tmp_path / "run"
    # lr 0: the AP cannot improve, so --patience 1 stops after the second evaluation of three epochs
    log = detrkit(capsys, "train", "--model", coco_checkpoint, "--data", coco, "--output-dir", out, *RUN,
                  "--epochs", "3", "--eval-every", "1", "--lr", "0", "--patience", "1", "--ema",
                  "--color-jitter", "0.3", "--push-to-hub", "me/tiny-detr", "--private")
    assert "new class head for 3 classes (was 91)" in log
    assert "effective configuration:" in log and "threshold 0.5 (softmax scores)" in log
    assert "early stopping: no better AP in 1 evaluation(s) since epoch 1" in log
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ema"] is True and metrics["epochs_run"] == 2
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["epochs"] == 3 and saved["color_jitter"] == 0.3 and saved["mixed_precision"] == "no"
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "person", "1": "car", "2": "dog"}
    assert (out / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o644  # umask 022

    card = out / "model" / "README.md"
    meta = metadata_load(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "object-detection"
    results = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert results["map"] == round(metrics["map"], 4) or metrics["map"] < 0
    assert ModelCard.load(card).data.eval_results[0].dataset_split == "val"
    assert FakeHfApi.calls[0] == ("create_repo", "me/tiny-detr", True)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(FakeHfApi.calls[1][2])

    # predict: the data's split with COCO results in the data's ids
    results_file = tmp_path / "results.json"
    detrkit(capsys, "predict", out / "model", "--data", coco, "--split", "val", "--threshold", "0",
            "--save-coco-json", results_file, "--output-dir", tmp_path / "p0")
    results = json.loads(results_file.read_text())
    truth = json.loads((coco / "annotations" / "instances_val.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 3, 18}
    assert {r["image_id"] for r in results} == {i["id"] for i in truth["images"]}

    # files, folders, globs and URLs; the same file name in two folders gives two drawings
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.open(coco / "val" / "img0.png").save(tmp_path / "a" / "x.png")
    Image.open(coco / "val" / "img1.png").save(tmp_path / "b" / "x.png")
    with serve(coco / "val") as url:
        detrkit(capsys, "predict", out / "model", tmp_path / "a" / "x.png", tmp_path / "b",
                str(coco / "train" / "img[01].png"), f"{url}/img2.png", "--output-dir", tmp_path / "p1")
    predictions = json.loads((tmp_path / "p1" / "predictions.json").read_text())
    assert len(predictions) == 5 and f"{url}/img2.png" in predictions
    drawings = sorted(p.name for p in (tmp_path / "p1").glob("*.png"))
    assert drawings == ["a__x.png", "b__x.png", "img0.png", "img1.png", "img2.png"], drawings
