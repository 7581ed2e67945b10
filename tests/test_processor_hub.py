"""Image processors on the Hub: save/load round trip, Auto registration, transformers' own (legacy) configs, and
loading with plain transformers + trust_remote_code in a fresh process where detrkit is NOT importable."""

import json
import textwrap

import numpy as np
import pytest
import torch
import transformers
from helpers import run_without_detrkit
from PIL import Image

from detrkit.modeling import DetrConfig
from detrkit.processing import DeformableDetrImageProcessor, DetrImageProcessor

CLASSES = [DetrImageProcessor, DeformableDetrImageProcessor]


def inputs():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((50, 70), (64, 40))]
    annotations = [{"image_id": i, "annotations": [{"bbox": [5, 6, 20, 30], "category_id": 7, "area": 600.0,
                                                    "iscrowd": 0}]} for i in range(2)]
    outputs = {"logits": torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0)),
               "pred_boxes": torch.rand(2, 6, 4, generator=torch.Generator().manual_seed(1))}
    return images, annotations, outputs


@pytest.mark.parametrize("cls", CLASSES)
def test_save_writes_auto_map_and_code_and_round_trips(cls, tmp_path):
    processor = cls(size={"height": 48, "width": 64}, normalize_boxes_to_padded_image=True, image_mean=[0.5] * 3)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoImageProcessor": f"image_processing_detr.{cls.__name__}"}
    assert saved["image_processor_type"] == cls.__name__
    assert (tmp_path / "image_processing_detr.py").is_file()
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    auto = transformers.AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(auto) is cls and auto.to_dict() == processor.to_dict()


def test_auto_image_processor_follows_the_detrkit_config(tmp_path):
    """A folder whose processor config names no class is resolved through the model config's registration."""
    DetrConfig(backbone="resnet18", use_pretrained_backbone=False).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 32, "longest_edge": 64}}))
    for backend in ("torchvision", "pil"):  # a PIL request must not fall back to transformers' own class
        processor = transformers.AutoImageProcessor.from_pretrained(tmp_path, backend=backend)
        assert type(processor) is DetrImageProcessor and processor.size.shortest_edge == 32


def test_transformers_configs_load(tmp_path):
    """facebook/detr-resnet-50's legacy config (size 800 + max_size) and a config saved by transformers' class."""
    legacy = {"do_normalize": True, "do_resize": True, "feature_extractor_type": "DetrFeatureExtractor",
              "format": "coco_detection", "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
              "max_size": 1333, "size": 800}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    processor = DetrImageProcessor.from_pretrained(tmp_path)
    assert processor.size.shortest_edge == 800 and processor.size.longest_edge == 1333
    transformers.DeformableDetrImageProcessor(size={"max_height": 90, "max_width": 120}).save_pretrained(tmp_path)
    processor = DeformableDetrImageProcessor.from_pretrained(tmp_path)
    assert processor.size.max_height == 90 and processor.size.max_width == 120


FRESH_PROCESS = textwrap.dedent(
    """
    import torch
    from torch.testing import assert_close
    from transformers import AutoImageProcessor

    for folder in sys.argv[1:]:
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        data = torch.load(folder + "/case.pt")
        out = processor(data["images"], annotations=data["annotations"], return_tensors="pt")
        expected = data["expected"]
        assert_close(out["pixel_values"], expected["pixel_values"], atol=0, rtol=0)
        assert torch.equal(out["pixel_mask"], expected["pixel_mask"])
        for ours, theirs in zip(out["labels"], expected["labels"], strict=True):
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
        detections = processor.post_process_object_detection(data["outputs"], 0.1, [(50, 70), (64, 40)])
        for ours, theirs in zip(detections, expected["detections"], strict=True):
            assert all(torch.equal(ours[k], theirs[k]) for k in ("scores", "labels", "boxes"))
        print("REMOTE-OK", type(processor).__name__)
    """
)


@pytest.mark.slow
def test_trust_remote_code_in_fresh_process_without_detrkit(tmp_path):
    images, annotations, outputs = inputs()
    folders = []
    for cls in CLASSES:
        folder = tmp_path / cls.__name__
        processor = cls(size={"shortest_edge": 48, "longest_edge": 80})
        processor.save_pretrained(folder)
        result = processor(images, annotations=annotations)
        expected = {"pixel_values": result["pixel_values"], "pixel_mask": result["pixel_mask"],
                    "labels": [dict(labels) for labels in result["labels"]],
                    "detections": processor.post_process_object_detection(outputs, 0.1, [(50, 70), (64, 40)])}
        images_as_arrays = [torch.from_numpy(np.array(image)) for image in images]  # (H, W, 3) uint8
        torch.save({"images": images_as_arrays, "annotations": annotations, "outputs": outputs, "expected": expected},
                   folder / "case.pt")
        folders.append(str(folder))

    result = run_without_detrkit(FRESH_PROCESS, *folders, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["REMOTE-OK", "DetrImageProcessor", "REMOTE-OK", "DeformableDetrImageProcessor"]
