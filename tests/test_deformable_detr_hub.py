"""Deformable DETR on the Hub: Auto classes, save_pretrained with auto_map + code, a fresh process without
detrkit loading it through trust_remote_code (the pure-PyTorch attention serving), the object-detection
pipeline with DeformableDetrImageProcessor, and the presets."""

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from helpers import DEFORMABLE_SMALL as SMALL
from helpers import FRESH_PROCESS, run_without_detrkit

from detrkit.modeling import (
    PRESETS,
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DeformableDetrModel,
    config_from_preset,
)
from detrkit.processing import DeformableDetrImageProcessor

CODE_FILES = {"configuration_deformable_detr.py", "modeling_deformable_detr.py", "deformable_attention.py",
              "deformable_transformer.py", "deformable_sampling.py", "configuration_detr_base.py",
              "detr_base.py", "detr_transformer.py", "backbone.py", "position_encoding.py", "loss.py",
              "matcher.py"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny two-stage model (the variant touching every module) + processor saved as a user would."""
    folder = tmp_path_factory.mktemp("deformable_detr")
    torch.manual_seed(0)
    config = DeformableDetrConfig(**{**SMALL, "num_labels": 3}, with_box_refine=True, two_stage=True,
                                  two_stage_num_proposals=12, id2label={i: f"class_{i}" for i in range(3)})
    model = DeformableDetrForObjectDetection(config).eval()
    model.save_pretrained(folder)
    DeformableDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    pixel_values = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        logits = model(pixel_values).logits
    torch.save({"pixel_values": pixel_values, "logits": logits}, folder / "expected.pt")
    return folder, model


def test_auto_classes_and_saved_files(saved):
    folder, model = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "detrkit_deformable_detr"
    assert config["auto_map"]["AutoModelForObjectDetection"] == "modeling_deformable_detr.DeformableDetrForObjectDetection"
    assert CODE_FILES <= {p.name for p in folder.iterdir()}
    card = (folder / "README.md").read_text()
    assert "Deformable DETR" in card and "two-stage: True" in card
    assert isinstance(transformers.AutoConfig.from_pretrained(folder), DeformableDetrConfig)
    assert type(transformers.AutoModel.from_pretrained(folder)) is DeformableDetrModel
    loaded = transformers.AutoModelForObjectDetection.from_pretrained(folder).eval()
    assert type(loaded) is DeformableDetrForObjectDetection
    expected = torch.load(folder / "expected.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(expected["pixel_values"]).logits, expected["logits"])


@pytest.mark.slow
def test_trust_remote_code_in_fresh_process_without_detrkit(saved, tmp_path):
    folder, _ = saved
    result = run_without_detrkit(FRESH_PROCESS, str(folder), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REMOTE-OK transformers_modules" in result.stdout


def test_pipeline_returns_top_k_sigmoid_detections(saved):
    _, model = saved
    processor = DeformableDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    detector = transformers.pipeline("object-detection", model=model, image_processor=processor)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    detections = detector(image, threshold=0.0)
    # 12 queries x 3 classes, each (query, class) pair a candidate
    assert len(detections) == 36
    for detection in detections:
        assert set(detection) == {"score", "label", "box"}
        assert detection["label"] in model.config.id2label.values()
        assert 0 <= detection["box"]["xmin"] <= detection["box"]["xmax"] <= 70


@pytest.mark.parametrize("name", ["deformable-detr", "deformable-detr-single-scale",
                                  "deformable-detr-single-scale-dc5", "deformable-detr-box-refine",
                                  "deformable-detr-two-stage"])
def test_presets_build_the_papers_variants(name):
    config = config_from_preset(name, num_labels=7)
    assert isinstance(config, DeformableDetrConfig) and PRESETS[name].description
    assert (config.num_labels, config.num_queries, config.d_model, config.auxiliary_loss) == (7, 300, 256, True)
    assert config.num_feature_levels == (1 if "single-scale" in name else 4)
    assert config.dilation == name.endswith("dc5")
    assert config.with_box_refine == (name.endswith("box-refine") or name.endswith("two-stage"))
    assert config.two_stage == name.endswith("two-stage")


def test_bad_config_and_inputs_are_named():
    with pytest.raises(ValueError, match="two_stage=True requires with_box_refine"):
        DeformableDetrConfig(two_stage=True)
    with pytest.raises(ValueError, match="num_feature_levels"):
        DeformableDetrConfig(num_feature_levels=0)
    with pytest.raises(ValueError, match="pre-norm"):
        DeformableDetrConfig(normalize_before=True)
    model = DeformableDetrForObjectDetection(DeformableDetrConfig(**SMALL)).eval()
    with pytest.raises(ValueError, match="pixel_mask has shape"):
        model(torch.zeros(1, 3, 64, 64), torch.ones(1, 32, 32))
    with pytest.raises(ValueError, match=r"labels\[0\] has no 'boxes'"):
        model(torch.zeros(1, 3, 64, 64), labels=[{"class_labels": torch.tensor([0])}])


def test_trained_box_refinement_heads_survive_save_and_load(tmp_path):
    """Each decoder layer's class head is its own parameter under box refinement: save_pretrained must keep
    all of them (a tying declaration once dropped layers > 0, silently reloading layer 0's head)."""
    torch.manual_seed(0)
    config = DeformableDetrConfig(**{**SMALL, "num_labels": 3}, with_box_refine=True)
    model = DeformableDetrForObjectDetection(config).eval()
    with torch.no_grad():  # as training leaves them: different heads per layer
        for head in model.class_embed:
            head.weight.normal_()
    assert model.class_embed[0].weight.data_ptr() != model.class_embed[-1].weight.data_ptr()
    model.save_pretrained(tmp_path)
    reloaded = DeformableDetrForObjectDetection.from_pretrained(tmp_path).eval()
    for original, loaded in zip(model.class_embed, reloaded.class_embed):
        torch.testing.assert_close(loaded.weight, original.weight, rtol=0, atol=0)
    pixel_values = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=0)
