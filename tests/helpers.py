"""What several test modules share: tiny configs (2-core CI), inputs, checkpoint and data writers, fresh-process
and training-subprocess runners. A plain module, imported by name (pytest puts tests/ on sys.path); fixtures live in
conftest.py. Optional packages (onnx, onnxruntime) are imported where they are used, never here."""

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

# ---- DETR: tiny config, padded inputs, targets, fresh processes without detrkit ---------------------------------

# A preamble that makes detrkit unimportable in a child process (its editable-install finder and path hooks), so a
# Hub load there proves that plain transformers + trust_remote_code suffice.
_HIDE_DETRKIT = """
import sys
def _editable(obj):
    return "__editable__" in (getattr(obj, "__module__", None) or type(obj).__module__)
sys.meta_path[:] = [f for f in sys.meta_path if not _editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not _editable(h)]
sys.path_importer_cache.clear()
try:
    import detrkit
except ImportError:
    pass
else:
    raise SystemExit("detrkit is importable, the test would prove nothing: " + str(detrkit.__path__))
"""


def run_without_detrkit(script: str, *args, cwd, hf_home=None) -> subprocess.CompletedProcess:
    """Run `script` (Python source; sys.argv[1:] = args) in a fresh, offline interpreter where detrkit is hidden,
    with the Hub cache (where remote code is copied) in `hf_home` (default: cwd/hf)."""
    env = {**os.environ, "HF_HOME": str(Path(hf_home or Path(cwd) / "hf")), "HF_HUB_OFFLINE": "1",
           "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", _HIDE_DETRKIT + textwrap.dedent(script), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

# resnet18, d_model 32, one encoder and two decoder layers: small enough for CI, deep enough for auxiliary losses
SMALL = dict(
    backbone="resnet18",
    d_model=32,
    encoder_layers=1,
    decoder_layers=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    num_queries=8,
    num_labels=4,
)


def padded_batch(sizes=((64, 96), (80, 72)), seed=0):
    """Two differently sized random images padded bottom-right, with transformers' pixel_mask (1 = real)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    pixel_values = torch.zeros(len(sizes), 3, height, width)
    pixel_mask = torch.zeros(len(sizes), height, width, dtype=torch.long)
    for i, (h, w) in enumerate(sizes):
        pixel_values[i, :, :h, :w] = torch.randn(3, h, w, generator=generator)
        pixel_mask[i, :h, :w] = 1
    return pixel_values, pixel_mask


def random_labels(batch_size, num_labels, seed=0, counts=None):
    """transformers-style targets: normalized cxcywh boxes inside the image, the second image with no objects
    when `counts` says so."""
    generator = torch.Generator().manual_seed(seed)
    counts = counts or [3] * batch_size
    labels = []
    for n in counts:
        centers = torch.rand(n, 2, generator=generator) * 0.5 + 0.25
        sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.1
        classes = torch.randint(0, num_labels, (n,), generator=generator)
        labels.append({"class_labels": classes, "boxes": torch.cat([centers, sizes], -1)})
    return labels

FRESH_PROCESS = textwrap.dedent(
    """
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForObjectDetection, pipeline

    folder = sys.argv[1]
    model = AutoModelForObjectDetection.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    expected = torch.load(folder + "/expected.pt")
    with torch.no_grad():
        logits = model(expected["pixel_values"]).logits
    torch.testing.assert_close(logits, expected["logits"])

    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    detector = pipeline("object-detection", model=model, image_processor=processor)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    detections = detector(image, threshold=0.0)
    assert detections and set(detections[0]) == {"score", "label", "box"}, detections
    assert detections[0]["label"].startswith("class_"), detections[0]
    print("REMOTE-OK", type(model).__module__, type(processor).__module__)
    """
)


# ---- Deformable DETR: tiny config (the transformers-parity one) and its variants ----------------------------------

DEFORMABLE_SMALL = dict(
    backbone="resnet18", d_model=64, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
    encoder_attention_heads=4, decoder_attention_heads=4, num_queries=12, num_labels=5, auxiliary_loss=True,
)
DEFORMABLE_VARIANTS = {
    "plain": {},
    "box-refine": dict(with_box_refine=True),
    "two-stage": dict(with_box_refine=True, two_stage=True, two_stage_num_proposals=12),
    "single-scale": dict(num_feature_levels=1),
    "single-scale-dc5": dict(num_feature_levels=1, dilation=True),
}


def two_images():
    """Two images, 96x128 and 72x100, padded to 96x128 with a pixel mask."""
    return padded_batch(((96, 128), (72, 100)))


def deformable_batch():
    """two_images() and their labels."""
    pixel_values, pixel_mask = two_images()
    labels = [
        {"class_labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.2, 0.3, 0.1, 0.2]])},
        {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.6, 0.4, 0.5, 0.3]])},
    ]
    return pixel_values, pixel_mask, labels


# ---- ONNX export: the exported variants and the comparison with PyTorch ---------------------------------------

TOLERANCE = 1e-4
SIZES = ((128, 160), (160, 96))  # neither the traced size (80 x 112 here) nor its 3 x 4 feature map
EXPORT_VARIANTS = {  # name: (config class in detrkit.modeling, its arguments beyond SMALL)
    "detr": ("DetrConfig", {}),
    "detr-dc5": ("DetrConfig", dict(dilation=True)),
    "deformable-single-scale": ("DeformableDetrConfig", dict(num_feature_levels=1)),
    "deformable": ("DeformableDetrConfig", {}),
    "deformable-box-refine": ("DeformableDetrConfig", dict(with_box_refine=True)),
    "deformable-two-stage": ("DeformableDetrConfig", dict(with_box_refine=True, two_stage=True,
                                                          two_stage_num_proposals=SMALL["num_queries"])),
}


def build(name, seed=0):
    """EXPORT_VARIANTS[name] with SMALL, random weights, in eval mode."""
    import detrkit.modeling as modeling

    config_name, kwargs = EXPORT_VARIANTS[name]
    deformable = config_name == "DeformableDetrConfig"
    torch.manual_seed(seed)
    config = getattr(modeling, config_name)(**SMALL, **kwargs, use_pretrained_backbone=False)
    model_class = modeling.DeformableDetrForObjectDetection if deformable else modeling.DetrForObjectDetection
    model = model_class(config).eval()
    heads = model.class_embed if deformable else [model.class_labels_classifier]
    with torch.no_grad():  # spread-out class scores, so top-k and argmax are not decided by near-ties
        for head in heads:
            head.bias.normal_(0, 1)
    return model


def session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def max_diff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - b.double().numpy()).max())


def check_against_pytorch(name, tmp_path):
    import onnx

    from detrkit.deploy.export import export_onnx

    model = build(name)
    path = export_onnx(model, tmp_path / f"{name}.onnx", example_size=(80, 112))
    onnx.checker.check_model(str(path), full_check=True)
    runtime = session(path)
    assert [i.name for i in runtime.get_inputs()] == ["pixel_values"]
    generator = torch.Generator().manual_seed(1)
    for height, width in SIZES:
        pixel_values = torch.randn(2, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model(pixel_values)
        logits, boxes = runtime.run(["logits", "pred_boxes"], {"pixel_values": pixel_values.numpy()})
        assert logits.shape == tuple(expected.logits.shape)
        assert max_diff(logits, expected.logits) <= TOLERANCE, (name, height, width)
        assert max_diff(boxes, expected.pred_boxes) <= TOLERANCE, (name, height, width)


# ---- multi-scale deformable attention: inputs and kernel-vs-reference comparison ----------------------------------

def make_inputs(shapes, batch=2, queries=7, heads=3, head_dim=8, points=4, dtype=torch.float64, low=-0.2, high=1.2,
                seed=0):
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    value = torch.randn(batch, int(sizes.sum()), heads, head_dim, generator=generator, dtype=dtype)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator, dtype=dtype)
    locations = locations * (high - low) + low
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator, dtype=dtype)
    return value, spatial_shapes, starts, locations, weights


def compare(inputs, atol, rtol, use_kernel_ref=False):
    """Forward and the three gradients of kernel and reference on the same inputs and output gradient."""
    from detrkit.kernels import multi_scale_deformable_attention
    from detrkit.modeling.deformable_sampling import multi_scale_deformable_attention as reference

    value, spatial_shapes, starts, locations, weights = inputs
    results = []
    for fn in (multi_scale_deformable_attention, reference):
        leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
        output = fn(leaves[0], spatial_shapes, starts, leaves[1], leaves[2])
        grad = torch.linspace(-1, 1, output.numel(), dtype=output.dtype, device=output.device).view_as(output)
        grads = torch.autograd.grad(output, leaves, grad) if output.numel() else [torch.zeros_like(t) for t in leaves]
        results.append((output, *grads))
    for name, got, expected in zip(("output", "grad value", "grad locations", "grad weights"), *results):
        torch.testing.assert_close(got, expected, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


# ---- official DETR / Deformable DETR checkpoints, rebuilt from the modules the official code is made of -----------

class _MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 4)])


def _backbone(name):
    resnet = getattr(torchvision.models, name)(weights=None)
    # the official FrozenBatchNorm2d keeps no num_batches_tracked; IntermediateLayerGetter drops avgpool/fc
    return {f"backbone.0.body.{k}": v for k, v in resnet.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def randomize(state_dict, seed):
    """Random values everywhere (positive variances), so no key can pass for another; weights scaled by their
    fan-in and BatchNorm near identity so activations stay O(1) through the network."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state_dict.items():
        noise = torch.randn(value.shape, generator=generator)
        if key.endswith("running_var"):
            out[key] = 1 + 0.2 * noise.abs()
        elif value.ndim == 1 and ("norm" in key or ".bn" in key or "downsample.1" in key):
            out[key] = 1 + 0.1 * noise if key.endswith("weight") else 0.1 * noise
        elif value.ndim >= 2:
            out[key] = noise * (1.4 / value[0].numel()) ** 0.5
        else:
            out[key] = 0.1 * noise
    return out


def official_detr_state_dict(backbone="resnet18", d_model=32, heads=2, ffn=64, encoder_layers=1, decoder_layers=2,
                             queries=8, classes=91, pre_norm=False, learned_positions=False, seed=0):
    """facebookresearch/detr's models/detr.py + transformer.py + backbone.py names and shapes."""
    model = nn.Module()
    transformer = model.transformer = nn.Module()
    transformer.encoder = nn.Module()
    transformer.encoder.layers = nn.ModuleList()
    for _ in range(encoder_layers):
        layer = nn.Module()
        layer.self_attn = nn.MultiheadAttention(d_model, heads)
        layer.linear1, layer.linear2 = nn.Linear(d_model, ffn), nn.Linear(ffn, d_model)
        layer.norm1, layer.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        transformer.encoder.layers.append(layer)
    if pre_norm:
        transformer.encoder.norm = nn.LayerNorm(d_model)
    transformer.decoder = nn.Module()
    transformer.decoder.layers = nn.ModuleList()
    for _ in range(decoder_layers):
        layer = nn.Module()
        layer.self_attn = nn.MultiheadAttention(d_model, heads)
        layer.multihead_attn = nn.MultiheadAttention(d_model, heads)
        layer.linear1, layer.linear2 = nn.Linear(d_model, ffn), nn.Linear(ffn, d_model)
        layer.norm1, layer.norm2, layer.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        transformer.decoder.layers.append(layer)
    transformer.decoder.norm = nn.LayerNorm(d_model)
    model.class_embed = nn.Linear(d_model, classes + 1)
    model.bbox_embed = _MLP(d_model)
    model.query_embed = nn.Embedding(queries, d_model)
    channels = 512 if backbone in ("resnet18", "resnet34") else 2048
    model.input_proj = nn.Conv2d(channels, d_model, kernel_size=1)
    state_dict = {**model.state_dict(), **_backbone(backbone)}
    if learned_positions:
        state_dict["backbone.1.row_embed.weight"] = torch.empty(50, d_model // 2)
        state_dict["backbone.1.col_embed.weight"] = torch.empty(50, d_model // 2)
    return randomize(state_dict, seed)


def _deformable_attention(d_model, heads, levels, points):
    attention = nn.Module()
    attention.sampling_offsets = nn.Linear(d_model, heads * levels * points * 2)
    attention.attention_weights = nn.Linear(d_model, heads * levels * points)
    attention.value_proj, attention.output_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
    return attention


def official_deformable_state_dict(backbone="resnet18", d_model=32, heads=2, ffn=64, encoder_layers=1,
                                   decoder_layers=2, queries=8, classes=91, levels=4, points=2,
                                   with_box_refine=False, two_stage=False, seed=0):
    """fundamentalvision/Deformable-DETR's models/deformable_detr.py + deformable_transformer.py names and shapes,
    with the same weight sharing: shared heads appear under every layer's name, refinement/two-stage heads also
    under transformer.decoder."""
    model = nn.Module()
    transformer = model.transformer = nn.Module()
    transformer.level_embed = nn.Parameter(torch.empty(levels, d_model))
    transformer.encoder = nn.Module()
    transformer.encoder.layers = nn.ModuleList()
    for _ in range(encoder_layers):
        layer = nn.Module()
        layer.self_attn = _deformable_attention(d_model, heads, levels, points)
        layer.norm1, layer.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        layer.linear1, layer.linear2 = nn.Linear(d_model, ffn), nn.Linear(ffn, d_model)
        transformer.encoder.layers.append(layer)
    transformer.decoder = nn.Module()
    transformer.decoder.layers = nn.ModuleList()
    for _ in range(decoder_layers):
        layer = nn.Module()
        layer.cross_attn = _deformable_attention(d_model, heads, levels, points)
        layer.self_attn = nn.MultiheadAttention(d_model, heads)
        layer.norm1, layer.norm2, layer.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        layer.linear1, layer.linear2 = nn.Linear(d_model, ffn), nn.Linear(ffn, d_model)
        transformer.decoder.layers.append(layer)
    if two_stage:
        transformer.enc_output, transformer.enc_output_norm = nn.Linear(d_model, d_model), nn.LayerNorm(d_model)
        transformer.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
        transformer.pos_trans_norm = nn.LayerNorm(2 * d_model)
    else:
        transformer.reference_points = nn.Linear(d_model, 2)
        model.query_embed = nn.Embedding(queries, 2 * d_model)
    channels = [128, 256, 512] if backbone in ("resnet18", "resnet34") else [512, 1024, 2048]
    channels = channels if levels > 1 else channels[-1:]
    projections = [nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(32, d_model)) for c in channels]
    in_channels = channels[-1]
    for _ in range(levels - len(channels)):
        projections.append(nn.Sequential(nn.Conv2d(in_channels, d_model, 3, 2, 1), nn.GroupNorm(32, d_model)))
        in_channels = d_model
    model.input_proj = nn.ModuleList(projections)
    num_pred = decoder_layers + 1 if two_stage else decoder_layers
    if with_box_refine:
        model.class_embed = nn.ModuleList(nn.Linear(d_model, classes) for _ in range(num_pred))
        model.bbox_embed = nn.ModuleList(_MLP(d_model) for _ in range(num_pred))
        transformer.decoder.bbox_embed = model.bbox_embed
    else:
        class_embed, bbox_embed = nn.Linear(d_model, classes), _MLP(d_model)
        model.class_embed = nn.ModuleList(class_embed for _ in range(num_pred))
        model.bbox_embed = nn.ModuleList(bbox_embed for _ in range(num_pred))
    if two_stage:
        transformer.decoder.class_embed = model.class_embed
    state_dict = {**model.state_dict(), **_backbone(backbone)}
    # randomize per parameter, not per key, so the official weight sharing survives
    for index, tensor in enumerate({id(t): t for t in [*model.parameters(), *model.buffers()]}.values()):
        with torch.no_grad():
            tensor.copy_(randomize({"x": tensor}, seed + index + 1)["x"])
    state_dict.update(model.state_dict())
    state_dict.update(randomize(_backbone(backbone), seed))
    return state_dict


def deformable_args(levels=4, points=2, queries=8, heads=2, with_box_refine=False, two_stage=False,
                    dilation=False, d_model=32, decoder_layers=2):
    """The argparse.Namespace Deformable DETR's main.py saves (the fields the converter reads)."""
    return argparse.Namespace(
        backbone="resnet18", dilation=dilation, position_embedding="sine", position_embedding_scale=2 * math.pi,
        num_feature_levels=levels, enc_layers=1, dec_layers=decoder_layers, dim_feedforward=64, hidden_dim=d_model,
        dropout=0.1, nheads=heads, num_queries=queries, dec_n_points=points, enc_n_points=points,
        with_box_refine=with_box_refine, two_stage=two_stage, aux_loss=True, set_cost_class=2, set_cost_bbox=5,
        set_cost_giou=2, cls_loss_coef=2, bbox_loss_coef=5, giou_loss_coef=2, focal_alpha=0.25, lr_backbone=2e-5,
        masks=False, dataset_file="coco",
    )


OFFICIAL_DEFORMABLE_VARIANTS = {
    "multi-scale": {},
    "single-scale": dict(levels=1),
    "single-scale-dc5": dict(levels=1, dilation=True),
    "box-refine": dict(with_box_refine=True),
    "two-stage": dict(with_box_refine=True, two_stage=True),
}


def save_deformable(folder, name="checkpoint.pth", **variant):
    dilation = variant.pop("dilation", False)
    state_dict = official_deformable_state_dict(**variant)
    args = deformable_args(dilation=dilation, **variant)
    path = folder / name
    torch.save({"model": state_dict, "args": args, "epoch": 49}, path)
    return path, state_dict


# ---- one detection ground truth in every data layout (sparse category ids, whole-pixel boxes) ----------------------

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 42, "name": "zebra"}]  # sparse ids
# (width, height, [(x, y, w, h, category id)]) per image; whole pixels, so every format is exact
TRUTH = {
    "train": [(80, 60, [(2, 3, 20, 10, 3), (40, 20, 39, 40, 42)]), (50, 70, [(0, 0, 50, 70, 7)]), (64, 48, []),
              (30, 40, [(5, 6, 7, 8, 42), (10, 10, 5, 5, 3)])],
    "valid": [(60, 80, [(1, 1, 10, 20, 7)]), (40, 40, [(3, 4, 30, 30, 3)])],
}


def write_image(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (30, 90, 150)).save(path)


def coco_json(split, truth=None):
    truth = truth or TRUTH
    images, annotations = [], []
    for i, (width, height, boxes) in enumerate(truth[split]):
        images.append({"id": 100 + i, "file_name": f"{split}_{i}.jpg", "width": width, "height": height})
        annotations += [{"id": 1000 * (i + 1) + k, "image_id": 100 + i, "bbox": [x, y, w, h], "category_id": c,
                         "area": w * h, "iscrowd": 0} for k, (x, y, w, h, c) in enumerate(boxes)]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def write_coco(root, placement, truth=None):
    truth = truth or TRUTH
    for split in truth:
        coco = coco_json(split, truth)
        folder = root / split
        for img, (width, height, _) in zip(coco["images"], truth[split]):
            write_image(folder / img["file_name"], width, height)
        json_file = {"annotations": root / "annotations" / f"instances_{split}.json",
                     "beside": root / f"instances_{split}.json",
                     "roboflow": folder / "_annotations.coco.json"}[placement]
        json_file.parent.mkdir(exist_ok=True)
        json_file.write_text(json.dumps(coco))
    return root



def yolo_line(box, width, height, names):
    x, y, w, h, c = box
    return f"{names.index(c)} {(x + w / 2) / width} {(y + h / 2) / height} {w / width} {h / height}"



def write_voc(root, difficult_first=False, truth=None):
    truth = truth or TRUTH
    names = {c["id"]: c["name"] for c in CATEGORIES}
    main = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    base = main.parent.parent
    for split in truth:
        ids = []
        for i, (width, height, boxes) in enumerate(truth[split]):
            stem = f"{split}_{i:04d}"
            ids.append(stem)
            write_image(base / "JPEGImages" / f"{stem}.jpg", width, height)
            ann = ElementTree.Element("annotation")
            ElementTree.SubElement(ann, "filename").text = f"{stem}.jpg"
            size = ElementTree.SubElement(ann, "size")
            for tag, value in (("width", width), ("height", height), ("depth", 3)):
                ElementTree.SubElement(size, tag).text = str(value)
            for k, (x, y, w, h, c) in enumerate(boxes):
                obj = ElementTree.SubElement(ann, "object")
                ElementTree.SubElement(obj, "name").text = names[c]
                ElementTree.SubElement(obj, "difficult").text = "1" if difficult_first and k == 0 else "0"
                box = ElementTree.SubElement(obj, "bndbox")
                # VOC corners are 1-based and inclusive
                for tag, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
                    ElementTree.SubElement(box, tag).text = str(value)
            (base / "Annotations").mkdir(exist_ok=True)
            ElementTree.ElementTree(ann).write(base / "Annotations" / f"{stem}.xml")
        (main / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return base


# ---- scripts/train.py in a subprocess --------------------------------------------------------------------------

TRAIN = Path(__file__).resolve().parents[1] / "scripts" / "train.py"


def run_training(command, **env_vars):
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_vars)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


def popen(command, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(process, timeout=600):
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return out


def latest_step(output_dir):
    index = Path(output_dir) / "checkpoints" / "index.json"
    latest = json.loads(index.read_text())["latest"] if index.exists() else None
    return int(latest.split("-")[1]) if latest else 0
