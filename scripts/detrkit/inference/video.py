"""Detection on video files (PyAV): an annotated copy of the video and the detections of every frame as JSON.

`detrkit predict MODEL clip.mp4` dispatches here for video suffixes; `predict_video` is the API. Frames are
decoded, detected in batches with the same `detect` / `draw_detections` as images (detections.py,
detection_drawing.py), and encoded at the input's frame rate.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def is_video(item: str) -> bool:
    return Path(item).suffix.lower() in VIDEO_SUFFIXES


def _frames(container):
    stream = container.streams.video[0]
    for frame in container.decode(stream):
        yield frame.to_image(), (float(frame.time) if frame.time is not None else None)


def _open_output(path: Path, rate: Fraction, width: int, height: int):
    import av

    output = av.open(str(path), mode="w")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    stream = output.add_stream(codec, rate=rate)
    stream.width, stream.height = width - width % 2, height - height % 2  # yuv420p needs even sizes
    stream.pix_fmt = "yuv420p"
    return output, stream


def predict_video(model, processor, video: str | Path, output_dir: str | Path, threshold: float | None = None,
                  device: str = "cpu", batch_size: int = 4) -> list[dict]:
    """Write `<stem>.annotated.mp4` and `<stem>.json` ({"video", "fps", "frames": [{"frame", "time",
    "detections"}]}) into `output_dir`; returns the frames' list. Detections as `detrkit predict` writes them
    (threshold: default the model family's)."""
    import av
    from torchvision.transforms.v2 import functional as F

    from .detections import detect, to_json
    from .detection_drawing import draw_detections

    video, output_dir = Path(video), Path(output_dir)
    if not video.is_file():
        raise FileNotFoundError(f"{video}: no such video")
    output_dir.mkdir(parents=True, exist_ok=True)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    try:
        container = av.open(str(video))
    except av.error.FFmpegError as error:
        raise ValueError(f"{video}: cannot read the video ({error})") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{video}: no video stream")
    rate = container.streams.video[0].average_rate or Fraction(25)
    frames, output, stream, batch = [], None, None, []

    def flush():
        nonlocal output, stream
        images = [image for image, _ in batch]
        for (image, time), detections in zip(batch, detect(model, processor, images, threshold, device)):
            frames.append({"frame": len(frames), "time": time, "detections": to_json(detections, id2label)})
            canvas = F.to_pil_image(draw_detections(image, detections, id2label))
            if output is None:
                output, stream = _open_output(output_dir / f"{video.stem}.annotated.mp4", rate, *canvas.size)
            picture = av.VideoFrame.from_image(canvas).reformat(stream.width, stream.height, "yuv420p")
            for packet in stream.encode(picture):
                output.mux(packet)
        batch.clear()

    try:
        for item in _frames(container):
            batch.append(item)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    finally:
        container.close()
        if output is not None:
            for packet in stream.encode():
                output.mux(packet)
            output.close()
    if not frames:
        raise ValueError(f"{video}: no frames decoded")
    (output_dir / f"{video.stem}.json").write_text(json.dumps(
        {"video": str(video), "fps": float(rate), "frames": frames}, indent=1))
    return frames
