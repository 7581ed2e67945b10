"""Attention pictures on fixed (seeded) weights: Deformable DETR's drawn points are the locations the model's
bilinear sampling (grid_sample) actually read, with the weights its softmax produced; DETR's maps are the last
decoder layer's cross-attention over every feature-map pixel."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import SMALL

from detrkit.deploy.visualize import attention_maps, draw
from detrkit.deploy.visualize_command import main
from detrkit.modeling import DeformableDetrConfig, DeformableDetrForObjectDetection, DetrConfig, DetrForObjectDetection
from detrkit.processing import DeformableDetrImageProcessor, DetrImageProcessor


def image(seed=0, size=(150, 110)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def deformable_model(**kwargs):
    torch.manual_seed(0)
    model = DeformableDetrForObjectDetection(DeformableDetrConfig(**SMALL, use_pretrained_backbone=False, **kwargs))
    with torch.no_grad():  # offsets that differ per query, so a wrong query or layer cannot pass by chance
        for module in model.modules():
            if type(module).__name__ == "MultiScaleDeformableAttention":
                module.sampling_offsets.weight.normal_(0, 0.5)
                module.attention_weights.weight.normal_(0, 0.5)
    return model.eval()


def processor(deformable):
    return (DeformableDetrImageProcessor if deformable else DetrImageProcessor)(
        size={"shortest_edge": 96, "longest_edge": 160})


@pytest.mark.parametrize("variant", [{}, dict(with_box_refine=True, two_stage=True, two_stage_num_proposals=8)])
def test_deformable_points_are_the_sampled_locations(variant, monkeypatch):
    monkeypatch.setenv("DETRKIT_DISABLE_KERNELS", "1")  # the PyTorch path, whose grid_sample calls we can see
    grids = []
    grid_sample = F.grid_sample

    def recording_grid_sample(input, grid, *args, **kwargs):
        grids.append(grid.detach().clone())
        return grid_sample(input, grid, *args, **kwargs)

    monkeypatch.setattr(F, "grid_sample", recording_grid_sample)
    model = deformable_model(**variant)
    maps = attention_maps(model, processor(True), image(), threshold=0.0)
    levels, heads, points = model.config.num_feature_levels, SMALL["decoder_attention_heads"], 4
    layers = SMALL["encoder_layers"] + SMALL["decoder_layers"]
    assert len(grids) == layers * levels  # one call per level per attention layer
    height, width = maps["input_size"]
    scale = np.array([width, height])
    queries = maps["detections"]["queries"]
    assert len(queries) > 0
    for level in range(levels):
        # grid_sample's grid (B * heads, Q, P, 2) in [-1, 1]; the picture's points (N, heads, L, P, 2) in pixels
        decoder_grid = grids[-levels + level].view(1, heads, -1, points, 2)[0]
        sampled = ((decoder_grid + 1) / 2).numpy() * scale  # (heads, Q, P, 2)
        np.testing.assert_allclose(maps["decoder_points"][:, :, level], sampled[:, queries].transpose(1, 0, 2, 3),
                                   rtol=1e-5, atol=1e-4)
        encoder_grid = grids[(SMALL["encoder_layers"] - 1) * levels + level].view(1, heads, -1, points, 2)[0]
        pixels = maps["pixels"]
        h0, w0 = maps["spatial_shapes"][0]
        rows = [int(y / height * h0) * w0 + int(x / width * w0) for x, y in pixels]
        sampled = ((encoder_grid + 1) / 2).numpy() * scale
        np.testing.assert_allclose(maps["encoder_points"][:, :, level], sampled[:, rows].transpose(1, 0, 2, 3),
                                   rtol=1e-5, atol=1e-4)
    # the weights are a softmax over levels x points per head
    np.testing.assert_allclose(maps["decoder_weights"].sum((-1, -2)), 1.0, rtol=1e-5)


def test_detr_cross_attention_maps():
    torch.manual_seed(0)
    model = DetrForObjectDetection(DetrConfig(**SMALL, use_pretrained_backbone=False, dilation=True)).eval()
    captured = []
    handle = model.model.decoder.layers[-1].encoder_attn.register_forward_hook(
        lambda module, args, output: captured.append(output[1]))
    maps = attention_maps(model, processor(False), image(1), threshold=0.0)
    handle.remove()
    found = maps["detections"]
    assert len(found["queries"]) == SMALL["num_queries"]  # threshold 0: every query
    height, width = maps["input_size"]
    h, w = maps["feature_size"]
    assert (h, w) == (-(-height // 16), -(-width // 16))  # DC5: stride 16
    expected = captured[0][0][:, found["queries"]].transpose(0, 1)  # (N, heads, hw)
    np.testing.assert_allclose(maps["decoder_attention"].reshape(*expected.shape), expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(maps["decoder_attention_mean"].sum((-1, -2)), 1.0, rtol=1e-5)
    assert maps["encoder_attention"].shape == (len(maps["pixels"]), h, w)
    np.testing.assert_allclose(maps["encoder_attention"].sum((-1, -2)), 1.0, rtol=1e-5)
    draw(image(1), maps, model.config.id2label)  # draws without error


def test_command_line_writes_a_png(tmp_path):
    model = deformable_model()
    model.save_pretrained(tmp_path / "model")
    processor(True).save_pretrained(tmp_path / "model")
    image().save(tmp_path / "image.png")
    output = tmp_path / "attention.png"
    assert main([str(tmp_path / "model"), str(tmp_path / "image.png"), "--output", str(output),
                 "--threshold", "0", "--pixel", "10", "20"]) == 0
    with Image.open(output) as picture:
        assert picture.width > 200 and picture.height > 200
