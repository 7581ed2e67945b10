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
import threading

import pytest
import torch
from helpers import OFFICIAL_DEFORMABLE_VARIANTS as DEFORMABLE_VARIANTS
from helpers import deformable_args, official_deformable_state_dict, official_detr_state_dict, randomize
from helpers import save_deformable
from helpers import two_images as padded_batch
from torch import nn

from detrkit.conversion.checkpoint_file import CheckpointError, load_official_checkpoint
from detrkit.conversion.convert_command import main as convert_main
from detrkit.conversion.convert import build_converted_model, convert_official_checkpoint
from detrkit.modeling import DeformableDetrForObjectDetection, DetrForObjectDetection


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
    return {**{f"detr.{k}": v for k, v in detector.items()}, **randomize(head.state_dict(), seed + 1)}


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
