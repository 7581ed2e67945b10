"""Segmentation models on the Hub path: Auto classes, the image-segmentation pipeline (panoptic, instance,
semantic) in-process, and the same through trust_remote_code in a fresh process where detrkit is not importable."""

import json
import textwrap

import numpy as np
import pytest
import torch
import transformers
from helpers import SMALL, run_without_detrkit
from PIL import Image

from detrkit.modeling import DeformableDetrConfig, DeformableDetrForSegmentation, DetrConfig, DetrForSegmentation
from detrkit.processing import DeformableDetrImageProcessor, DetrImageProcessor

SEGMENTATION = dict(SMALL, encoder_attention_heads=8, decoder_attention_heads=8,
                    id2label={i: f"class_{i}" for i in range(SMALL["num_labels"])})
SUBTASKS = ("panoptic", "instance", "semantic")


def _image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))


def _save(kind, tmp_path_factory):
    folder = tmp_path_factory.mktemp(kind)
    torch.manual_seed(0)
    if kind == "detr":
        model, processor_class = DetrForSegmentation(DetrConfig(**SEGMENTATION)), DetrImageProcessor
    else:
        model = DeformableDetrForSegmentation(DeformableDetrConfig(**SEGMENTATION))
        processor_class = DeformableDetrImageProcessor
    model.eval().save_pretrained(folder)
    processor = processor_class(size={"shortest_edge": 64, "longest_edge": 96})
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    return {kind: _save(kind, tmp_path_factory) for kind in ("detr", "deformable")}


@pytest.fixture(params=["detr", "deformable"])
def saved(request, saved_models):
    return saved_models[request.param]


def _pipeline_summary(segmenter) -> dict:
    """Per subtask: labels, scores and mask pixel counts, as plain data to compare across processes."""
    summary = {}
    for subtask in SUBTASKS:
        # random weights: keep every query and every pixel it wins
        kwargs = {} if subtask == "semantic" else {"threshold": 0.0, "mask_threshold": 0.0,
                                                   "overlap_mask_area_threshold": 0.0}
        segments = segmenter(_image(), subtask=subtask, **kwargs)
        summary[subtask] = [(s["label"], None if s["score"] is None else round(float(s["score"]), 4),
                             int((np.asarray(s["mask"]) > 0).sum())) for s in segments]
    return summary


def test_auto_classes_and_auto_map(saved):
    folder, model, _ = saved
    for auto in (transformers.AutoModelForImageSegmentation, transformers.AutoModelForUniversalSegmentation):
        assert type(auto.from_pretrained(folder)) is type(model)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    name = f"modeling_detr_segmentation.{type(model).__name__}"
    assert auto_map["AutoModelForImageSegmentation"] == auto_map["AutoModelForUniversalSegmentation"] == name
    assert (folder / "modeling_detr_segmentation.py").exists() and (folder / "mask_head.py").exists()
    assert "pipeline_tag: image-segmentation" in (folder / "README.md").read_text()


def test_pipeline_in_process_matches_post_processing(saved):
    folder, model, processor = saved
    segmenter = transformers.pipeline("image-segmentation", model=model, image_processor=processor)
    summary = _pipeline_summary(segmenter)
    for subtask in SUBTASKS:
        assert summary[subtask], subtask
    # the pipeline's panoptic segments are the processor's on the model's own outputs
    inputs = processor(images=_image(), return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    expected = processor.post_process_panoptic_segmentation(outputs, threshold=0.0, mask_threshold=0.0,
                                                            overlap_mask_area_threshold=0.0, target_sizes=[(60, 90)])[0]
    labels = [model.config.id2label[s["label_id"]] for s in expected["segments_info"]]
    assert [label for label, _, _ in summary["panoptic"]] == labels
    (folder / "expected.json").write_text(json.dumps(summary))


FRESH_PROCESS = textwrap.dedent(
    """
    import json
    import numpy as np
    from PIL import Image
    from transformers import (AutoImageProcessor, AutoModelForImageSegmentation, AutoModelForUniversalSegmentation,
                              pipeline)


    def check(folder):
        model = AutoModelForImageSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        universal = AutoModelForUniversalSegmentation.from_pretrained(folder, trust_remote_code=True)
        assert type(universal).__name__ == type(model).__name__
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
        summary = {}
        for subtask in ("panoptic", "instance", "semantic"):
            # random weights: keep every query and every pixel it wins
            kwargs = {} if subtask == "semantic" else {"threshold": 0.0, "mask_threshold": 0.0,
                                                       "overlap_mask_area_threshold": 0.0}
            segments = segmenter(image, subtask=subtask, **kwargs)
            summary[subtask] = [(s["label"], None if s["score"] is None else round(float(s["score"]), 4),
                                 int((np.asarray(s["mask"]) > 0).sum())) for s in segments]
        print(folder, json.dumps(summary))


    for folder in sys.argv[1:]:
        check(folder)
    """
)


@pytest.mark.slow
def test_pipeline_through_remote_code_without_detrkit(saved_models, tmp_path):
    """Both models in one fresh process (one interpreter start-up); the same segments as in-process."""
    folders = []
    for saved in saved_models.values():
        if not (saved[0] / "expected.json").exists():
            test_pipeline_in_process_matches_post_processing(saved)
        folders.append(saved[0])
    result = run_without_detrkit(FRESH_PROCESS, *folders, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()[-len(folders):]
    for folder, line in zip(folders, lines):
        printed, summary = line.split(" ", 1)
        assert printed == str(folder)
        summary, expected = json.loads(summary), json.loads((folder / "expected.json").read_text())
        # remote code runs the pure-PyTorch deformable attention, in-process the C++ kernel: scores to 1e-3
        for subtask in SUBTASKS:
            assert [(label, area) for label, _, area in summary[subtask]] == \
                   [(label, area) for label, _, area in expected[subtask]], (folder.name, subtask)
            assert np.allclose([score or 0 for _, score, _ in summary[subtask]],
                               [score or 0 for _, score, _ in expected[subtask]], atol=1e-3), (folder.name, subtask)
