"""Prediction on a video (PyAV): a tiny generated clip in, an annotated clip with as many frames and per-frame
JSON out, each frame's detections those of the model on that decoded frame; `detrkit predict` dispatches videos."""
import json

import numpy as np
import pytest
import torch

from helpers import SMALL

av = pytest.importorskip("av")

from detrkit.inference.video import predict_video  # noqa: E402
from detrkit.modeling import DetrConfig, DetrForObjectDetection  # noqa: E402
from detrkit.processing import DetrImageProcessor  # noqa: E402
from detrkit.data.builtin.shape_drawing import draw_image  # noqa: E402

FRAMES, SIZE, THRESHOLD = 6, 96, 0.53


def write_clip(path):
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for _ in range(FRAMES):
            pixels, _ = draw_image("shapes-a", SIZE, rng)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decoded(path):
    with av.open(str(path)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


@pytest.fixture
def model_and_processor():
    torch.manual_seed(0)
    model = DetrForObjectDetection(DetrConfig(**SMALL, use_pretrained_backbone=False)).eval()
    with torch.no_grad():
        model.class_labels_classifier.weight.normal_(0, 1)  # scores that differ from frame to frame
        model.class_labels_classifier.bias.normal_(0, 1)
    return model, DetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 128})


def test_annotated_video_and_per_frame_json(model_and_processor, tmp_path):
    model, processor = model_and_processor
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    frames = predict_video(model, processor, clip, tmp_path / "out", threshold=THRESHOLD, batch_size=4)
    written = json.loads((tmp_path / "out" / "clip.json").read_text())
    assert written["frames"] == json.loads(json.dumps(frames)) and written["fps"] == 5.0
    assert [f["frame"] for f in frames] == list(range(FRAMES))

    originals = decoded(clip)
    assert len(originals) == FRAMES
    counts = []
    for frame, image in zip(frames, originals):  # the model's own detections on each decoded frame
        with torch.no_grad():
            outputs = model(**processor(images=[image], return_tensors="pt"))
        expected = processor.post_process_object_detection(outputs, THRESHOLD, [(image.height, image.width)])[0]
        counts.append(len(expected["scores"]))
        assert [d["label_id"] for d in frame["detections"]] == expected["labels"].tolist()
        np.testing.assert_allclose([d["score"] for d in frame["detections"]], expected["scores"].numpy(), atol=1e-4)
        boxes = [list(d["box"].values()) for d in frame["detections"]]
        np.testing.assert_allclose(np.reshape(boxes, (-1, 4)), expected["boxes"].numpy(), atol=0.01)
    assert 0 < sum(counts) < FRAMES * SMALL["num_queries"]  # the threshold selects

    annotated = decoded(tmp_path / "out" / "clip.annotated.mp4")
    assert len(annotated) == FRAMES and annotated[0].width >= SIZE


def test_bad_inputs_name_the_problem(model_and_processor, tmp_path):
    model, processor = model_and_processor
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        predict_video(model, processor, tmp_path / "missing.mp4", tmp_path)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="broken.mp4: cannot read the video"):
        predict_video(model, processor, tmp_path / "broken.mp4", tmp_path)


def test_predict_command_dispatches_videos(model_and_processor, tmp_path):
    from detrkit.inference.predict_command import main

    model, processor = model_and_processor
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    write_clip(tmp_path / "clip.mp4")
    assert main([str(tmp_path / "model"), str(tmp_path / "clip.mp4"), "--output-dir", str(tmp_path / "out"),
                 "--threshold", str(THRESHOLD)]) in (0, None)
    frames = json.loads((tmp_path / "out" / "clip.json").read_text())["frames"]
    assert len(frames) == FRAMES and len(decoded(tmp_path / "out" / "clip.annotated.mp4")) == FRAMES
