"""The README's "Fine-tune on your data" commands, run as written on tiny generated sets: a COCO export, a YOLO
folder and a `datasets` DatasetDict in the cppe-5 layout (served for its Hub id by a patched
`datasets.load_dataset`, offline), with tiny checkpoints in place of the Hub models, a few smoke flags appended
and the Hub upload intercepted."""
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from detrkit.cli import dispatch as cli

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

README = Path(__file__).resolve().parents[1] / "README.md"
NAMES = ["person", "car", "dog"]
COCO_IDS = [1, 3, 18]
TINY = dict(backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64,
            decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10)
SMOKE = ["--image-size", "64", "--max-steps", "1", "--batch-size", "2", "--num-workers", "0", "--report-to", "[]",
         "--predictions-image", "false", "--max-eval-samples", "2"]


def readme_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Fine-tune on your data"):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("detrkit ")]


def scene(index: int):
    """An 80x64 image with one or two rectangles: [(label, [x, y, w, h])]."""
    generator = torch.Generator().manual_seed(index)
    image = Image.new("RGB", (80, 64), (90, 90, 90))
    draw, objects = ImageDraw.Draw(image), []
    for k in range(1 + index % 2):
        x, y = [int(v) for v in torch.randint(0, 40, (2,), generator=generator)]
        w, h = [int(v) for v in torch.randint(12, 24, (2,), generator=generator)]
        label = (index + k) % 3
        draw.rectangle([x, y, x + w, y + h], fill=(80 * label, 200, 60 * k))
        objects.append((label, [x, y, w, h]))
    return image, objects


SPLITS = {"train": range(0, 4), "val": range(4, 6)}


def write_coco(root: Path) -> None:
    (root / "annotations").mkdir(parents=True)
    for split, indices in SPLITS.items():
        (root / split).mkdir()
        images, annotations = [], []
        for i in indices:
            image, objects = scene(i)
            image.save(root / split / f"{i}.png")
            images.append({"id": 10 + i, "file_name": f"{i}.png", "width": 80, "height": 64})
            annotations += [{"id": len(annotations) + 1, "image_id": 10 + i, "category_id": COCO_IDS[label],
                             "bbox": box, "area": box[2] * box[3], "iscrowd": 0} for label, box in objects]
        categories = [{"id": i, "name": n} for i, n in zip(COCO_IDS, NAMES)]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))


def write_yolo(root: Path) -> None:
    for split, indices in SPLITS.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in indices:
            image, objects = scene(i)
            image.save(root / "images" / split / f"{i}.jpg")
            (root / "labels" / split / f"{i}.txt").write_text("".join(
                f"{label} {(x + w / 2) / 80:.6f} {(y + h / 2) / 64:.6f} {w / 80:.6f} {h / 64:.6f}\n"
                for label, (x, y, w, h) in objects))
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames: {NAMES}\n")


def cppe5_like():
    import datasets

    features = datasets.Features({
        "image_id": datasets.Value("int64"), "image": datasets.Image(), "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "objects": datasets.Sequence({"id": datasets.Value("int64"), "area": datasets.Value("int64"),
                                      "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                                      "category": datasets.ClassLabel(names=NAMES)})})

    def split(indices):
        rows = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
        for i in indices:
            image, objects = scene(i)
            rows["image_id"].append(i)
            rows["image"].append(image)
            rows["width"].append(80)
            rows["height"].append(64)
            rows["objects"].append({"id": list(range(len(objects))), "area": [b[2] * b[3] for _, b in objects],
                                    "bbox": [b for _, b in objects], "category": [l for l, _ in objects]})
        return datasets.Dataset.from_dict(rows, features=features)

    return datasets.DatasetDict({"train": split(SPLITS["train"]), "test": split(SPLITS["val"])})


def coco_checkpoints(root: Path) -> dict[str, Path]:
    """Tiny stand-ins for the Hub's COCO checkpoints: 91 label slots, "N/A" in the gaps, a 64 px processor."""
    import transformers
    from torchvision.models._meta import _COCO_CATEGORIES

    from detrkit.modeling import DeformableDetrForObjectDetection, config_from_preset
    from detrkit.processing import DeformableDetrImageProcessor

    id2label = {i: ("N/A" if i == 0 else name) for i, name in enumerate(_COCO_CATEGORIES)}
    labels = dict(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    size = {"shortest_edge": 64, "longest_edge": 107}
    torch.manual_seed(0)
    detr, deformable = root / "detr-resnet-50", root / "deformable-detr"
    transformers.DetrForObjectDetection(transformers.DetrConfig(use_pretrained_backbone=False, **TINY, **labels)) \
        .save_pretrained(detr)
    transformers.DetrImageProcessor(size=size).save_pretrained(detr)
    DeformableDetrForObjectDetection(config_from_preset("deformable-detr", **TINY, num_feature_levels=2,
                                                        encoder_n_points=2, decoder_n_points=2, **labels)) \
        .save_pretrained(deformable)
    DeformableDetrImageProcessor(size=size).save_pretrained(deformable)
    return {"facebook/detr-resnet-50": detr, "SenseTime/deformable-detr": deformable}


def test_readme_fine_tune_commands_run_as_written(tmp_path, monkeypatch, capsys):
    import datasets
    import huggingface_hub

    commands = readme_commands()
    assert [c[1] for c in commands] == ["train", "evaluate", "predict", "train", "train"]
    monkeypatch.chdir(tmp_path)
    write_coco(tmp_path / "path" / "to" / "coco")
    write_yolo(tmp_path / "path" / "to" / "yolo")
    (tmp_path / "photos").mkdir()
    (tmp_path / "shots").mkdir()
    for i in range(2):
        scene(i)[0].save(tmp_path / "photos" / f"p{i}.png")
        scene(i)[0].save(tmp_path / "shots" / f"s{i}.jpg")
    models = coco_checkpoints(tmp_path / "hub")
    cppe5 = cppe5_like()
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda name, *a, **k: cppe5 if name == "cppe-5" else pytest.fail(f"unexpected Hub id {name}"))
    pushed = []

    class FakeHfApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, commit_message=None, repo_type=None):
            pushed.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return "https://huggingface.co/" + repo_id

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)

    for command in commands:
        argv = [str(models.get(a, a)) for a in command[1:]] + (SMOKE if command[1] == "train" else [])
        code = cli.main(argv)
        out, err = capsys.readouterr()
        assert code == 0, (" ".join(command), (out + err)[-3000:])
        if command[1] == "train":
            run = Path(argv[argv.index("--output-dir") + 1])
            assert (run / "model" / "model.safetensors").is_file() and (run / "metrics.json").is_file()
            assert sorted(json.loads((run / "model" / "config.json").read_text())["id2label"].values()) == sorted(NAMES)
            assert "new class head for 3 classes (was 91)" in out + err
    assert (tmp_path / "runs" / "coco" / "model" / "eval_val.json").is_file()
    assert len(json.loads((tmp_path / "runs" / "coco" / "predictions" / "predictions.json").read_text())) == 4
    assert pushed and pushed[0][0] == "me/detr-cppe5" and "preprocessor_config.json" in pushed[0][1]
