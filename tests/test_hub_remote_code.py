"""Hub compatibility: Auto registration, save_pretrained writing auto_map + code, loading in a fresh process
where detrkit is NOT importable (plain transformers + trust_remote_code), the object-detection pipeline and
push_to_hub with the upload intercepted."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from helpers import FRESH_PROCESS, SMALL, run_without_detrkit
from PIL import Image

from detrkit.modeling import DetrConfig, DetrForObjectDetection, DetrModel
from detrkit.processing import DetrImageProcessor

CODE_FILES = {"configuration_detr.py", "modeling_detr.py", "backbone.py", "detr_transformer.py", "loss.py",
              "matcher.py", "position_encoding.py", "model_card.py"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model + processor saved the way a user would, with its outputs on a fixed input."""
    folder = tmp_path_factory.mktemp("detr")
    torch.manual_seed(0)
    config = DetrConfig(**SMALL, id2label={i: f"class_{i}" for i in range(SMALL["num_labels"])})
    model = DetrForObjectDetection(config).eval()
    model.save_pretrained(folder)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    pixel_values = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        logits = model(pixel_values).logits
    torch.save({"pixel_values": pixel_values, "logits": logits}, folder / "expected.pt")
    return folder, model


def test_auto_classes_resolve_to_detrkit(saved):
    folder, _ = saved
    assert isinstance(transformers.AutoConfig.from_pretrained(folder), DetrConfig)
    assert type(transformers.AutoModelForObjectDetection.from_pretrained(folder)) is DetrForObjectDetection
    assert type(transformers.AutoModel.from_pretrained(folder)) is DetrModel


def test_save_writes_auto_map_code_safetensors_and_card(saved):
    folder, _ = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "detrkit_detr"
    # each saved class maps its own Auto class (a saved DetrModel maps AutoModel)
    assert config["auto_map"] == {
        "AutoConfig": "configuration_detr.DetrConfig",
        "AutoModelForObjectDetection": "modeling_detr.DetrForObjectDetection",
    }
    files = {p.name for p in folder.iterdir()}
    assert CODE_FILES <= files
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: object-detection" in card and "resnet18" in card and "$" not in card.split("```")[0]


@pytest.mark.slow
def test_trust_remote_code_in_fresh_process_without_detrkit(saved, tmp_path):
    folder, _ = saved
    result = run_without_detrkit(FRESH_PROCESS, str(folder), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REMOTE-OK transformers_modules" in result.stdout


def test_pipeline_with_detrkit_model_and_processor(saved):
    _, model = saved
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    detector = transformers.pipeline("object-detection", model=model, image_processor=processor)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    detections = detector(image, threshold=0.0)
    assert 0 < len(detections) <= SMALL["num_queries"]
    for detection in detections:
        assert set(detection) == {"score", "label", "box"}
        assert detection["label"] in model.config.id2label.values()
        assert set(detection["box"]) == {"xmin", "ymin", "xmax", "ymax"}


def test_push_to_hub_uploads_saved_files_plus_card(saved, tmp_path, monkeypatch):
    """Intercept the Hub calls; the uploaded folder must be what save_pretrained writes, README.md included."""
    import huggingface_hub

    _, model = saved
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = repo_id
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()))
        calls["card"] = (Path(folder_path) / "README.md").read_text()
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert model.push_to_hub("someone/tiny-detr", token="not-a-token") == "commit-info"

    model.save_pretrained(tmp_path)
    assert calls["create_repo"] == "someone/tiny-detr"
    assert calls["upload"] == ("someone/tiny-detr", sorted(p.name for p in tmp_path.iterdir()))
    assert "README.md" in calls["upload"][1]
    assert "DetrForObjectDetection" in calls["card"]
