"""ACT (adaptive clustering attention): exactness where clustering is lossless, padding, gradients, determinism,
and the switch on trained weights (transformers' checkpoints, save/load, trust_remote_code in a fresh process)."""

import json
import textwrap
from collections import defaultdict

import pytest
import torch
import transformers
from helpers import SMALL, padded_batch, run_without_detrkit

from detrkit.modeling import DetrConfig, DetrForObjectDetection
from detrkit.modeling.adaptive_clustering_attention import (
    AdaptiveClusteringAttention,
    adaptive_clusters,
    clustered_attention,
)
from detrkit.modeling.multihead_attention import MultiheadAttention

D, HEADS = 32, 4


def _pair(seed=0, **act_kwargs):
    """An exact attention and an ACT attention with the same (random) weights."""
    torch.manual_seed(seed)
    exact = MultiheadAttention(D, HEADS).eval()
    act = AdaptiveClusteringAttention(D, HEADS, **act_kwargs).eval()
    act.load_state_dict(exact.state_dict())
    return exact, act


def _reference_clusters(codes, valid):
    """Group equal (padding flag, code tuple) per row with a dict: an independent oracle."""
    rows, n, _ = codes.shape
    index, counts = torch.empty(rows, n, dtype=torch.long), torch.empty(rows, dtype=torch.long)
    for r in range(rows):
        groups = defaultdict(list)
        for i in range(n):
            groups[(bool(valid[r, i]), tuple(codes[r, i].tolist()))].append(i)
        for c, members in enumerate(groups.values()):
            index[r, members] = c
        counts[r] = len(groups)
    return index, counts


def _same_partition(a, b):
    """True if two cluster labelings of one row define the same groups (labels may be permuted)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("span", [3, 1 << 40], ids=["small-codes", "int64-overflowing-codes"])
def test_clusters_match_a_dict_oracle(span):
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(-span, span, (3, 40, 6), generator=generator)
    codes[:, 20:] = codes[:, :20]  # duplicated queries must share a cluster
    codes[:, :, :4] = codes[:, :, :4] % 2  # and a few rounds with collisions, so clusters hold several queries
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[1, 30:] = False  # padding: row 1's last ten share codes with real pixels 10..19 of the same row
    index, counts = adaptive_clusters(codes, valid)
    expected_index, expected_counts = _reference_clusters(codes, valid)
    assert torch.equal(counts, expected_counts)
    assert all(_same_partition(index[r], expected_index[r]) for r in range(3))
    assert int(index.max()) < int(counts.max()) and bool((index.max(1).values + 1 == counts).all())


def test_every_query_alone_gives_exact_attention():
    exact, act = _pair(bucket_width=1e-6, hash_rounds=4)  # buckets far finer than any two queries' distance
    x = torch.randn(2, 50, D)
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1, 35:] = False
    with torch.no_grad():
        expected, expected_weights = exact(x, x, x, mask, output_attentions=True)
        actual, weights = act(x, x, x, mask, output_attentions=True)
    assert torch.equal(act.num_clusters, torch.full((2, HEADS), 50))
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=0)


def test_duplicated_queries_share_a_cluster_and_stay_exact():
    exact, act = _pair(bucket_width=1e-6, hash_rounds=4)
    distinct = torch.randn(1, 12, D)
    x = distinct[:, torch.arange(36) % 12]  # every query three times
    with torch.no_grad():
        expected, _ = exact(x, x, x)
        actual, _ = act(x, x, x)
    assert torch.equal(act.num_clusters, torch.full((1, HEADS), 12))
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


def test_coarse_hashing_clusters_and_approximates():
    exact, act = _pair(hash_rounds=2, bucket_width=8.0)
    x = torch.randn(1, 200, D)
    with torch.no_grad():
        expected, _ = exact(x, x, x)
        actual, _ = act(x, x, x)
    assert bool((act.num_clusters < 200).all()) and bool((act.num_clusters >= 1).all())
    assert not torch.allclose(actual, expected, atol=1e-3)  # lossy: the test above is not vacuous


def test_padding_invariance():
    """An image alone and the same image padded (garbage in the padding) give the same outputs on real pixels;
    the padded pixels form their own clusters."""
    _, act = _pair(hash_rounds=8)
    real = torch.randn(1, 60, D)
    padded = torch.cat([real, 5 * torch.randn(1, 40, D)], 1)
    mask = torch.ones(1, 100, dtype=torch.bool)
    mask[:, 60:] = False
    with torch.no_grad():
        alone, _ = act(real, real, real)
        alone_clusters = act.num_clusters.clone()
        batched, _ = act(torch.cat([padded, padded]), torch.cat([padded, padded]), torch.cat([padded, padded]),
                         torch.cat([mask, torch.ones_like(mask)]))
    torch.testing.assert_close(batched[0, :60], alone[0], atol=1e-6, rtol=0)
    assert bool((act.num_clusters[0] > alone_clusters[0]).all())  # the padding's clusters come on top


def test_deterministic_for_a_seed():
    _, first = _pair(seed=0)
    second = AdaptiveClusteringAttention(D, HEADS).eval()
    second.load_state_dict(first.state_dict())
    other_seed = AdaptiveClusteringAttention(D, HEADS, seed=1).eval()
    other_seed.load_state_dict(first.state_dict())
    x = torch.randn(2, 120, D)
    with torch.no_grad():
        a, b, c = first(x, x, x)[0], second(x, x, x)[0], other_seed(x, x, x)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert first.state_dict().keys() == MultiheadAttention(D, HEADS).state_dict().keys()  # nothing stored


def test_fewer_rounds_only_merge_clusters():
    """Rounds are drawn as a prefix, so L = 16 coarsens L = 32: the accuracy/cost trade-off over L is monotone."""
    x = torch.randn(1, 300, D)
    clusterings = {}
    for rounds in (32, 24, 16):
        _, act = _pair(hash_rounds=rounds, bucket_width=2.0)
        q = act._split_heads(act.q_proj(x))
        clusterings[rounds] = act.cluster(q, None)
    for fine, coarse in ((32, 24), (24, 16)):
        (fine_index, fine_count), (coarse_index, coarse_count) = clusterings[fine], clusterings[coarse]
        assert bool((coarse_count <= fine_count).all())
        for head in range(HEADS):  # every fine cluster lies inside one coarse cluster
            pairs = set(zip(fine_index[0, head].tolist(), coarse_index[0, head].tolist()))
            assert len(pairs) == int(fine_count[0, head])
    assert int(clusterings[16][1].sum()) < int(clusterings[32][1].sum())


def test_gradcheck_fp64_with_fixed_clusters():
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 9, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    k = torch.randn(2, 2, 7, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    v = torch.randn(2, 2, 7, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    codes = torch.randint(0, 2, (2, 2, 9, 2), generator=generator)
    clusters, num_clusters = adaptive_clusters(codes)
    assert bool((num_clusters < 9).all())  # real clusters, several queries per prototype
    key_padding_mask = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])

    def attention(q, k, v):
        return clustered_attention(q, k, v, clusters, num_clusters, key_padding_mask, output_attentions=True)

    assert torch.autograd.gradcheck(attention, (q, k, v), fast_mode=True)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="act_hash_rounds"):
        AdaptiveClusteringAttention(D, HEADS, hash_rounds=0)
    with pytest.raises(ValueError, match="act_bucket_width"):
        AdaptiveClusteringAttention(D, HEADS, bucket_width=0.0)
    with pytest.raises(ValueError, match="unknown encoder_attention_type"):
        DetrForObjectDetection(DetrConfig(**SMALL, encoder_attention_type="clustered"))


@pytest.fixture(scope="module")
def transformers_checkpoint(tmp_path_factory):
    """A checkpoint written by transformers' own DetrForObjectDetection (random weights, 2 encoder layers)."""
    folder = tmp_path_factory.mktemp("transformers-detr")
    torch.manual_seed(0)
    kwargs = dict(SMALL, encoder_layers=2)
    config = transformers.DetrConfig(use_pretrained_backbone=False, **kwargs)
    transformers.DetrForObjectDetection(config).eval().save_pretrained(folder)
    return folder


def test_switch_on_a_transformers_checkpoint(transformers_checkpoint):
    exact = DetrForObjectDetection.from_pretrained(transformers_checkpoint).eval()
    act, info = DetrForObjectDetection.from_pretrained(
        transformers_checkpoint, encoder_attention_type="act", act_hash_rounds=24, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    act.eval()
    assert act.config.act_hash_rounds == 24
    layers = act.model.encoder.layers
    assert all(isinstance(layer.self_attn, AdaptiveClusteringAttention) for layer in layers)
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        expected = exact(pixel_values, pixel_mask=pixel_mask)
        approximate = act(pixel_values, pixel_mask=pixel_mask)
        for layer in layers:  # lossless clustering: the ACT model is the exact model
            layer.self_attn.bucket_width = 1e-7
        lossless = act(pixel_values, pixel_mask=pixel_mask)
    torch.testing.assert_close(lossless.logits, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lossless.pred_boxes, expected.pred_boxes, atol=1e-5, rtol=1e-5)
    assert approximate.logits.shape == expected.logits.shape and bool(approximate.logits.isfinite().all())
    assert all(layer.self_attn.num_clusters.shape == (2, SMALL["encoder_attention_heads"]) for layer in layers)


FRESH_PROCESS = textwrap.dedent(
    """
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForObjectDetection, pipeline

    folder = sys.argv[1]
    model = AutoModelForObjectDetection.from_pretrained(folder, trust_remote_code=True).eval()
    attention = model.model.encoder.layers[0].self_attn
    assert type(attention).__name__ == "AdaptiveClusteringAttention", type(attention)
    expected = torch.load(folder + "/expected.pt")
    with torch.no_grad():
        logits = model(expected["pixel_values"]).logits
    torch.testing.assert_close(logits, expected["logits"])
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    detector = pipeline("object-detection", model=model, image_processor=processor)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    assert detector(image, threshold=0.0)
    print("REMOTE-ACT-OK", attention.num_clusters.tolist())
    """
)


@pytest.mark.slow
def test_saved_act_model_runs_through_remote_code_and_pipeline(transformers_checkpoint, tmp_path):
    from detrkit.processing import DetrImageProcessor

    model = DetrForObjectDetection.from_pretrained(transformers_checkpoint, encoder_attention_type="act",
                                                   act_hash_rounds=16, act_seed=5).eval()
    folder = tmp_path / "act"
    model.save_pretrained(folder)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert (saved["encoder_attention_type"], saved["act_hash_rounds"], saved["act_seed"]) == ("act", 16, 5)
    assert (folder / "adaptive_clustering_attention.py").exists()
    pixel_values = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.save({"pixel_values": pixel_values, "logits": model(pixel_values).logits}, folder / "expected.pt")
    result = run_without_detrkit(FRESH_PROCESS, str(folder), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REMOTE-ACT-OK" in result.stdout
