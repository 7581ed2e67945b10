"""`detrkit demo MODEL`: a Gradio page to try a detector on your own images.

Upload an image (or pick the bundled example): the page lists the detections above a score slider and draws them
(with the segments when the model segments); pick a detection to see what it attends to (`visualize.py`). The
model runs once per image, with every candidate kept; the slider and the picker only filter and draw.
This module is also the app of a Hugging Face Space (`detrkit space` writes an app.py that calls `main`).
"""
from __future__ import annotations

import html
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


from .visualize import attention_maps, draw, one_detection


def example_image(folder: str | Path) -> Path:
    """The bundled example: a picture of the built-in shapes data set (drawn, not downloaded)."""
    from detrkit.data.builtin.shape_drawing import draw_image

    path = Path(folder) / "shapes-example.png"
    if not path.exists():
        pixels, _ = draw_image("shapes-a", 192, np.random.default_rng(3))
        Image.fromarray(pixels).save(path)
    return path


def analyse(model, processor, image: Image.Image) -> dict:
    """Every candidate detection of `image` (threshold 0) with its attention maps, and the model's outputs."""
    return attention_maps(model, processor, image.convert("RGB"), threshold=0.0, pixels="detections",
                          return_outputs=True)


def kept(maps: dict, threshold: float) -> list[int]:
    """Indices of the candidates above `threshold` (strictly, as the processor's post-processing)."""
    return [i for i, score in enumerate(maps["detections"]["scores"]) if score > threshold]


def table_html(maps: dict, indices: list[int], id2label: dict) -> str:
    found = maps["detections"]
    rows = "".join(
        "<tr><td>{}</td><td class='label'>{}</td><td class='score'>{:.4f}</td>{}</tr>".format(
            i, html.escape(str(id2label.get(int(found["labels"][i]), int(found["labels"][i])))),
            float(found["scores"][i]), "".join(f"<td>{float(v):.1f}</td>" for v in found["boxes"][i]))
        for i in indices)
    return ("<table id='detections-table'><thead><tr><th>#</th><th>label</th><th>score</th><th>x0</th><th>y0</th>"
            f"<th>x1</th><th>y1</th></tr></thead><tbody>{rows}</tbody></table>"
            f"<p id='detections-count'>{len(indices)} detection(s)</p>")


def detections_picture(image: Image.Image, maps: dict, indices: list[int], threshold: float, processor,
                        id2label: dict) -> Image.Image:
    """Boxes and labels drawn on the image; the segments of the same detections when the model segments."""
    from torchvision.transforms.v2 import functional as F
    from torchvision.utils import draw_segmentation_masks

    from detrkit.inference.detection_drawing import draw_detections

    found = maps["detections"]
    picked = {k: torch.as_tensor(found[k][indices]) for k in ("scores", "labels", "boxes")}
    canvas = draw_detections(image, picked, id2label)
    outputs = maps.get("outputs")
    if getattr(outputs, "pred_masks", None) is not None and indices:
        segments = processor.post_process_panoptic_segmentation(
            outputs, threshold=threshold, target_sizes=[canvas.shape[-2:]])[0]
        ids = [s["id"] for s in segments["segments_info"]]
        if ids:
            masks = torch.stack([segments["segmentation"] == i for i in ids])
            canvas = draw_segmentation_masks(canvas, masks, alpha=0.45)
    return F.to_pil_image(canvas)


def build_app(model, processor, examples: list[str | Path] = (), title: str = "detrkit demo"):
    """The Gradio Blocks app for `model` (in eval mode) and its image processor."""
    import gradio as gr
    import matplotlib.pyplot as plt

    id2label = {int(k): v for k, v in model.config.id2label.items()}

    def choices(maps, indices):
        found = maps["detections"]
        return [(f"#{i} {id2label.get(int(found['labels'][i]), int(found['labels'][i]))} "
                 f"{float(found['scores'][i]):.2f}", i) for i in indices]

    def attention_picture(image, maps, index):
        if index is None:
            return None
        figure = draw(image, one_detection(maps, int(index)), id2label, max_detections=1)
        with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as file:
            figure.savefig(file.name, dpi=80)
        plt.close(figure)
        return file.name

    def show(image, maps, threshold):
        indices = kept(maps, threshold)
        picture = detections_picture(image, maps, indices, threshold, processor, id2label)
        first = indices[0] if indices else None
        return (picture, table_html(maps, indices, id2label),
                gr.update(choices=choices(maps, indices), value=first), attention_picture(image, maps, first))

    def on_image(image, threshold):
        if image is None:
            return None, None, "", gr.update(choices=[], value=None), None
        image = image.convert("RGB")
        maps = analyse(model, processor, image)
        return (image, maps, *show(image, maps, threshold))

    def on_threshold(image, maps, threshold):
        if maps is None:
            return None, "", gr.update(), None
        return show(image, maps, threshold)

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\nUpload an image or pick the example. Detections above the score threshold are "
                    "listed and drawn; choose one to see what it attends to.")
        image_state, maps_state = gr.State(), gr.State()
        with gr.Row():
            image_in = gr.Image(type="pil", label="image", elem_id="input-image")
            picture = gr.Image(type="pil", label="detections", elem_id="detections-image", interactive=False)
        threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="score threshold", elem_id="threshold")
        table = gr.HTML(elem_id="detections")
        with gr.Row():
            chosen = gr.Dropdown(choices=[], label="detection", elem_id="chosen")
            attention = gr.Image(type="filepath", label="what it attends to", elem_id="attention",
                                 interactive=False)
        if examples:
            gr.Examples([[str(e)] for e in examples], inputs=image_in)
        image_in.change(on_image, [image_in, threshold], [image_state, maps_state, picture, table, chosen, attention])
        threshold.release(on_threshold, [image_state, maps_state, threshold], [picture, table, chosen, attention])
        chosen.change(attention_picture, [image_state, maps_state, chosen], attention)
    return app
