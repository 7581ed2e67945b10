"""Converting official DETR / Deformable DETR checkpoints (detrkit.conversion).

The official layouts are rebuilt here from the modules the official code is made of (torchvision's ResNet,
torch's nn.MultiheadAttention, Linear, LayerNorm, GroupNorm; names as in facebookresearch/detr and
fundamentalvision/Deformable-DETR), tiny and with random weights. Exactness against the official model code
itself is checked outside the project (it needs the official repositories); here: every key consumed and none
invented, the architecture read back, the round trip through save_pretrained, the DC5 evidence rules, and clear
errors for files that are not official checkpoints.
"""

import argparse
import functools
import http.server
import math
import threading

import pytest
import torch
import torchvision
from torch import nn

from detrkit.conversion.checkpoint_file import CheckpointError, load_official_checkpoint
from detrkit.conversion.convert_command import main as convert_main
from detrkit.conversion.convert import build_converted_model, convert_official_checkpoint
from detrkit.modeling import DeformableDetrForObjectDetection, DetrForObjectDetection


class _MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 4)])


def _backbone(name):
    resnet = getattr(torchvision.models, name)(weights=None)
    # the official FrozenBatchNorm2d keeps no num_batches_tracked; IntermediateLayerGetter drops avgpool/fc
    return {f"backbone.0.body.{k}": v for k, v in resnet.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def _randomize(state_dict, seed):
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
    return _randomize(state_dict, seed)


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
            tensor.copy_(_randomize({"x": tensor}, seed + index + 1)["x"])
    state_dict.update(model.state_dict())
    state_dict.update(_randomize(_backbone(backbone), seed))
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


DEFORMABLE_VARIANTS = {
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


def padded_batch():
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.zeros(2, 3, 96, 128)
    pixel_mask = torch.zeros(2, 96, 128, dtype=torch.long)
    for i, (height, width) in enumerate([(96, 128), (72, 100)]):
        pixel_values[i, :, :height, :width] = torch.randn(3, height, width, generator=generator)
        pixel_mask[i, :height, :width] = 1
    return pixel_values, pixel_mask


def _same_values(official: dict, converted: dict, prefix: str = ""):
    """Nothing dropped, duplicated or invented: the backbone maps name for name, and the multiset of all other
    weight values is unchanged (the q/k/v split only cuts the packed projections)."""
    body, ours = prefix + "backbone.0.body.", prefix + "model.backbone.conv_encoder.model."
    assert {k[len(ours):] for k in converted if k.startswith(ours)} == {k[len(body):] for k in official
                                                                        if k.startswith(body)}
    for key in (k for k in official if k.startswith(body)):
        assert torch.equal(converted[ours + key[len(body):]], official[key]), key
    flat = lambda sd, skip: torch.sort(torch.cat([v.flatten().float() for k, v in sd.items()  # noqa: E731
                                                  if not k.startswith(skip)])).values
    torch.testing.assert_close(flat(converted, ours), flat(official, body), rtol=0, atol=0)


# ---- DETR -------------------------------------------------------------------------------------------------------

def test_detr_every_key_consumed_none_invented_and_architecture_read(tmp_path):
    official = official_detr_state_dict(pre_norm=True, learned_positions=True)
    torch.save({"model": official}, tmp_path / "fine-tune.pth")
    model, dc5_source = build_converted_model(load_official_checkpoint(str(tmp_path / "fine-tune.pth")), False)
    assert isinstance(model, DetrForObjectDetection) and dc5_source == "the --dc5/--no-dc5 flag"
    config = model.config
    assert (config.backbone, config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_ffn_dim,
            config.num_queries, config.num_labels) == ("resnet18", 32, 1, 2, 64, 8, 91)
    assert config.normalize_before and config.position_embedding_type == "learned" and not config.dilation
    assert config.auxiliary_loss  # the official training used auxiliary decoding losses
    assert config.id2label[1] == "person" and config.id2label[12] == "N/A" and config.id2label[90] == "toothbrush"
    _same_values(official, model.state_dict())
    # the packed attention projections are split in q, k, v order
    packed = official["transformer.decoder.layers.1.multihead_attn.in_proj_weight"]
    torch.testing.assert_close(model.model.decoder.layers[1].encoder_attn.v_proj.weight, packed[64:])


def test_detr_round_trip_through_save_pretrained(tmp_path):
    import transformers

    torch.save({"model": official_detr_state_dict()}, tmp_path / "detr-r50-e632da11.pth")  # an official name
    model = convert_official_checkpoint(str(tmp_path / "detr-r50-e632da11.pth"), tmp_path / "out")
    assert not model.config.dilation  # the official name without "dc5"
    reloaded = transformers.AutoModelForObjectDetection.from_pretrained(tmp_path / "out").eval()
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert processor.size["longest_edge"] == 1333 and processor.size["shortest_edge"] == 800
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        expected, actual = model(pixel_values, pixel_mask), reloaded(pixel_values, pixel_mask)
    torch.testing.assert_close(actual.logits, expected.logits)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "detr-r50-e632da11.pth" in card and "@inproceedings{carion2020end" in card
    assert "model-index" not in card and "no paper figure" in card  # a tiny architecture has no paper result


def test_zoo_architecture_card_has_paper_figures_and_model_index(tmp_path):
    import yaml

    from detrkit.conversion.official_card import write_official_model_card
    from detrkit.modeling import config_from_preset

    model = DetrForObjectDetection(config_from_preset("detr-resnet-50-dc5"))
    write_official_model_card(model, tmp_path, "detr-r50-dc5-f0fb7ef5.pth", "the official file name")
    card = (tmp_path / "README.md").read_text()
    front_matter = yaml.safe_load(card.split("---")[1])
    index = front_matter["model-index"][0]
    assert index["name"] == "detr-resnet-50-dc5"
    assert index["results"][0]["metrics"][0]["value"] == 43.3
    assert "`detr-resnet-50-dc5`" in card and "$" not in card


@pytest.mark.parametrize("name,flag,expected", [
    ("detr-r50-dc5-f0fb7ef5.pth", None, True),
    ("detr-r101-2c7b67e5.pth", None, False),
    ("my-finetune.pth", True, True),
    ("my-finetune.pth", False, False),
])
def test_detr_dilation_from_flag_or_official_name(tmp_path, name, flag, expected):
    torch.save({"model": official_detr_state_dict()}, tmp_path / name)
    model, _ = build_converted_model(load_official_checkpoint(str(tmp_path / name)), flag)
    assert model.config.dilation is expected


def test_detr_without_dc5_evidence_is_an_error(tmp_path):
    torch.save({"model": official_detr_state_dict()}, tmp_path / "my-finetune.pth")
    with pytest.raises(CheckpointError, match="--dc5 or --no-dc5"):
        build_converted_model(load_official_checkpoint(str(tmp_path / "my-finetune.pth")), None)


def test_detr_conflicting_dc5_evidence_is_an_error(tmp_path):
    torch.save({"model": official_detr_state_dict()}, tmp_path / "detr-r50-dc5-f0fb7ef5.pth")
    with pytest.raises(CheckpointError, match="conflicting DC5 evidence"):
        build_converted_model(load_official_checkpoint(str(tmp_path / "detr-r50-dc5-f0fb7ef5.pth")), False)


def test_detr_args_decide_dilation_and_heads(tmp_path):
    args = argparse.Namespace(dilation=True, nheads=4, aux_loss=False, eos_coef=0.2, dropout=0.0)
    torch.save({"model": official_detr_state_dict(), "args": args}, tmp_path / "checkpoint.pth")
    model, source = build_converted_model(load_official_checkpoint(str(tmp_path / "checkpoint.pth")))
    config = model.config
    assert config.dilation and source == "the checkpoint's args.dilation"
    assert (config.encoder_attention_heads, config.auxiliary_loss, config.eos_coefficient) == (4, False, 0.2)


def official_panoptic_state_dict(d_model=128, seed=0):
    """models/segmentation.py's DETRsegm: the detector under `detr.`, MHAttentionMap(d, d, nheads) and
    MaskHeadSmallConv(d + nheads, fpn_dims, d) (fpn_dims: the backbone's C4, C3, C2 widths; resnet18 here)."""
    heads, fpn_dims = 8, [256, 128, 64]
    detector = official_detr_state_dict(d_model=d_model, heads=heads, classes=250, seed=seed)
    dim = d_model + heads
    inter = [dim, d_model // 2, d_model // 4, d_model // 8, d_model // 16]
    head = nn.Module()
    head.bbox_attention = nn.Module()
    head.bbox_attention.q_linear = nn.Linear(d_model, d_model)
    head.bbox_attention.k_linear = nn.Linear(d_model, d_model)
    mask_head = head.mask_head = nn.Module()
    convs = [(dim, dim), (dim, inter[1]), (inter[1], inter[2]), (inter[2], inter[3]), (inter[3], inter[4])]
    for i, (n_in, n_out) in enumerate(convs, start=1):
        setattr(mask_head, f"lay{i}", nn.Conv2d(n_in, n_out, 3, padding=1))
        setattr(mask_head, f"gn{i}", nn.GroupNorm(8, n_out))
    mask_head.out_lay = nn.Conv2d(inter[4], 1, 3, padding=1)
    for i, (fpn, n_out) in enumerate(zip(fpn_dims, inter[1:4]), start=1):
        setattr(mask_head, f"adapter{i}", nn.Conv2d(fpn, n_out, 1))
    return {**{f"detr.{k}": v for k, v in detector.items()}, **_randomize(head.state_dict(), seed + 1)}


def test_panoptic_detr_converts_to_detr_for_segmentation(tmp_path):
    from detrkit.modeling import DetrForSegmentation

    official = official_panoptic_state_dict()
    torch.save({"model": official}, tmp_path / "detr-r50-panoptic-00ce5173.pth")  # the name says: no DC5
    model = convert_official_checkpoint(str(tmp_path / "detr-r50-panoptic-00ce5173.pth"), tmp_path / "out")
    assert isinstance(model, DetrForSegmentation) and not model.config.dilation
    config = model.config
    assert config.num_labels == 250 and config.id2label[1] == "person" and config.id2label[199] == "wall-other-merged"
    assert config.id2label[91] == "N/A" and len(config.label_ids_to_fuse) == 53 and 200 in config.label_ids_to_fuse
    _same_values(official, model.state_dict(), prefix="detr.")
    reloaded = DetrForSegmentation.from_pretrained(tmp_path / "out").eval()
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        expected, actual = model(pixel_values, pixel_mask), reloaded(pixel_values, pixel_mask)
    torch.testing.assert_close(actual.pred_masks, expected.pred_masks)
    torch.testing.assert_close(actual.logits, expected.logits)
    assert "pipeline_tag: image-segmentation" in (tmp_path / "out" / "README.md").read_text()


# ---- Deformable DETR -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(DEFORMABLE_VARIANTS))
def test_deformable_variant_read_and_every_key_consumed(tmp_path, variant):
    path, official = save_deformable(tmp_path, **DEFORMABLE_VARIANTS[variant])
    model, _ = build_converted_model(load_official_checkpoint(str(path)))
    assert isinstance(model, DeformableDetrForObjectDetection)
    config, spec = model.config, DEFORMABLE_VARIANTS[variant]
    assert config.num_feature_levels == spec.get("levels", 4)
    assert config.with_box_refine == spec.get("with_box_refine", False)
    assert config.two_stage == spec.get("two_stage", False)
    assert config.dilation == spec.get("dilation", False)
    assert (config.encoder_n_points, config.encoder_attention_heads, config.num_queries) == (2, 2, 8)
    assert (config.class_cost, config.class_loss_coefficient, config.num_labels) == (2, 2, 91)
    _same_values(official, model.state_dict())


@pytest.mark.parametrize("variant", ["two-stage", "single-scale-dc5"])
def test_deformable_round_trip_through_save_pretrained(tmp_path, variant):
    import transformers

    path, official = save_deformable(tmp_path, **DEFORMABLE_VARIANTS[variant])
    model = convert_official_checkpoint(str(path), tmp_path / "out")
    reloaded = transformers.AutoModelForObjectDetection.from_pretrained(tmp_path / "out").eval()
    _same_values(official, reloaded.state_dict())
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        expected, actual = model(pixel_values, pixel_mask), reloaded(pixel_values, pixel_mask)
    torch.testing.assert_close(actual.logits, expected.logits)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes)
    assert type(transformers.AutoImageProcessor.from_pretrained(tmp_path / "out")).__name__ == \
        "DeformableDetrImageProcessor"


def test_deformable_refinement_heads_stay_separate(tmp_path):
    path, official = save_deformable(tmp_path, with_box_refine=True)
    model, _ = build_converted_model(load_official_checkpoint(str(path)))
    torch.testing.assert_close(model.bbox_embed[1].layers[0].weight, official["bbox_embed.1.layers.0.weight"])
    torch.testing.assert_close(model.class_embed[1].weight, official["class_embed.1.weight"])
    assert not torch.equal(model.class_embed[0].weight, model.class_embed[1].weight)


def test_deformable_without_args_is_an_error(tmp_path):
    torch.save({"model": official_deformable_state_dict()}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="without 'args'"):
        build_converted_model(load_official_checkpoint(str(tmp_path / "x.pth")))


def test_deformable_args_contradicting_weights_is_an_error(tmp_path):
    args = deformable_args(with_box_refine=True)  # the weights have no refinement heads
    torch.save({"model": official_deformable_state_dict(), "args": args}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="with_box_refine"):
        build_converted_model(load_official_checkpoint(str(tmp_path / "x.pth")))


def test_deformable_dc5_flag_contradicting_args_is_an_error(tmp_path):
    path, _ = save_deformable(tmp_path, levels=1)
    with pytest.raises(CheckpointError, match="contradicts"):
        build_converted_model(load_official_checkpoint(str(path)), dilation=True)


def test_deformable_untied_shared_heads_are_an_error(tmp_path):
    path, official = save_deformable(tmp_path, with_box_refine=True)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["model"]["transformer.decoder.bbox_embed.0.layers.0.weight"] = torch.zeros_like(
        official["bbox_embed.0.layers.0.weight"])
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="differs from"):
        build_converted_model(load_official_checkpoint(str(path)))


# ---- files that are not official checkpoints -----------------------------------------------------------------------

def test_not_an_official_checkpoint(tmp_path):
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="expected an official DETR"):
        load_official_checkpoint(str(tmp_path / "other.pth"))


class Payload:  # a pickled class the safe loader must refuse, never import or call
    pass


def test_arbitrary_pickles_are_refused(tmp_path):
    torch.save({"model": official_detr_state_dict(), "extra": Payload()}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_official_checkpoint(str(tmp_path / "unsafe.pth"))


def test_missing_file_and_unknown_keys(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_official_checkpoint(str(tmp_path / "absent.pth"))
    state_dict = official_detr_state_dict()
    state_dict["transformer.decoder.extra_head.weight"] = torch.zeros(3)
    torch.save({"model": state_dict}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="no place in the converted model"):
        build_converted_model(load_official_checkpoint(str(tmp_path / "extra.pth")), False)


# ---- sources and the command line ----------------------------------------------------------------------------------

@pytest.fixture
def http_folder(tmp_path):
    """Serve tmp_path on 127.0.0.1 (a stand-in for dl.fbaipublicfiles.com)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_source_and_cli(tmp_path, http_folder, capsys):
    torch.save({"model": official_detr_state_dict()}, tmp_path / "detr-r50-dc5-f0fb7ef5.pth")
    assert convert_main([f"{http_folder}/detr-r50-dc5-f0fb7ef5.pth", str(tmp_path / "out")]) == 0
    assert "DC5: True" in capsys.readouterr().out
    assert DetrForObjectDetection.from_pretrained(tmp_path / "out").config.dilation
    assert convert_main([f"{http_folder}/absent.pth", str(tmp_path / "out2")]) == 2
    assert "could not download" in capsys.readouterr().err


def test_cli_reports_missing_dc5_flag(tmp_path, capsys):
    torch.save({"model": official_detr_state_dict()}, tmp_path / "mine.pth")
    assert convert_main([str(tmp_path / "mine.pth"), str(tmp_path / "out")]) == 2
    assert "--dc5 or --no-dc5" in capsys.readouterr().err
    assert convert_main([str(tmp_path / "mine.pth"), str(tmp_path / "out"), "--no-dc5"]) == 0


def test_zoo_measure_counts_parameters_and_macs():
    """The zoo table's figures come from `python -m detrkit.conversion.measure`; here at a small input size."""
    from detrkit.conversion.measure import measure

    small = measure("detr-resnet-50", height=64, width=96)
    larger = measure("detr-resnet-50", height=128, width=192)
    assert small["parameters_M"] == 41.5  # the paper's 41M
    assert 0 < small["GMACs"] < larger["GMACs"]
