"""ACT-switched DETR as ONNX: onnxruntime (CPU) at sizes other than the traced one, batch 2 with padding, agrees with
PyTorch within 1e-4, and the number of clusters is computed per image by the graph (not the traced example's)."""
import numpy as np
import pytest
import torch

from helpers import SMALL, TOLERANCE, max_diff, padded_batch, session

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from detrkit.deploy.export import export_onnx  # noqa: E402
from detrkit.modeling import DetrConfig, DetrForObjectDetection  # noqa: E402
from detrkit.modeling.adaptive_clustering_attention import (  # noqa: E402
    AdaptiveClusteringAttention,
    adaptive_clusters,
)
from detrkit.processing import DetrImageProcessor  # noqa: E402

EXAMPLE = (160, 192)  # the traced size: 5 x 6 = 30 encoder pixels
BATCHES = (((224, 288), (128, 160)), ((288, 224), (288, 224)))  # 63 encoder pixels; the first batch padded
HASHING = {  # both cluster (fewer clusters than pixels) and give counts that differ from image to image
    "few-rounds": dict(act_hash_rounds=2, act_bucket_width=0.25),
    "many-rounds": dict(act_hash_rounds=32, act_bucket_width=2.0),
}


def build_act(name):
    torch.manual_seed(0)
    config = DetrConfig(**SMALL, **HASHING[name], encoder_attention_type="act", use_pretrained_backbone=False)
    model = DetrForObjectDetection(config).eval()
    with torch.no_grad():  # spread-out class scores, so the argmax is not decided by near-ties
        model.class_labels_classifier.bias.normal_(0, 1)
    return model


def encoder_clusters(model) -> torch.Tensor:
    """(layers, B, H): each encoder layer's cluster count per image and head from the model's last forward."""
    return torch.stack([layer.self_attn.num_clusters for layer in model.model.encoder.layers])


@pytest.mark.parametrize("name,pixel_mask", [("few-rounds", True), ("many-rounds", True), ("many-rounds", False)])
def test_onnxruntime_matches_pytorch(name, pixel_mask, tmp_path):
    model = build_act(name)
    path = export_onnx(model, tmp_path / "act.onnx", pixel_mask=pixel_mask, postprocess=True, example_size=EXAMPLE)
    traced = encoder_clusters(model)  # what the trace saw
    onnx.checker.check_model(str(path), full_check=True)
    runtime = session(path)
    assert [i.name for i in runtime.get_inputs()] == ["pixel_values"] + ["pixel_mask"] * pixel_mask + ["target_sizes"]
    target_sizes = torch.tensor([[480, 640], [300, 200]])
    for sizes in BATCHES:
        pixel_values, mask = padded_batch(sizes, seed=1)
        inputs = {"pixel_values": pixel_values.numpy(), "target_sizes": target_sizes.numpy()}
        if pixel_mask:
            inputs["pixel_mask"] = mask.numpy()
        else:  # without the mask input, the padding is image content to both
            mask = None
        with torch.no_grad():
            expected = model(pixel_values, mask)
        clusters = encoder_clusters(model)
        # a prototype buffer frozen at the traced count could not hold these, and the two images differ
        assert int(clusters.max()) > int(traced.max()), (clusters, traced)
        assert not torch.equal(clusters[:, 0], clusters[:, 1])
        logits, boxes, scores, labels, pixel_boxes = runtime.run(None, inputs)
        assert max_diff(logits, expected.logits) <= TOLERANCE, (name, sizes)
        assert max_diff(boxes, expected.pred_boxes) <= TOLERANCE, (name, sizes)
        results = DetrImageProcessor().post_process_object_detection(expected, threshold=-1.0,
                                                                       target_sizes=target_sizes)
        for i, result in enumerate(results):
            assert labels[i].tolist() == result["labels"].tolist()
            assert max_diff(scores[i], result["scores"]) <= TOLERANCE
            assert max_diff(pixel_boxes[i], result["boxes"]) <= TOLERANCE * 640  # pixels: relative tolerance


class AttentionWithClusters(torch.nn.Module):
    """The ACT attention alone, with its cluster count as an output of the graph."""

    def __init__(self, attention):
        super().__init__()
        self.attention = attention

    def forward(self, x, key_padding_mask):
        out, _ = self.attention(x, x, x, key_padding_mask)
        return out, self.attention.num_clusters


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")  # as export_onnx
def test_cluster_count_is_a_graph_value(tmp_path):
    torch.manual_seed(0)
    module = AttentionWithClusters(AdaptiveClusteringAttention(32, 2, hash_rounds=24, bucket_width=4.0)).eval()
    example = (torch.randn(2, 30, 32), torch.ones(2, 30, dtype=torch.bool))
    path = tmp_path / "attention.onnx"
    with torch.no_grad():
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17,
                          input_names=["x", "key_padding_mask"], output_names=["out", "num_clusters"],
                          dynamic_axes={"x": {0: "batch", 1: "pixels"}, "key_padding_mask": {0: "batch", 1: "pixels"}})
    runtime = session(path)
    counts = []
    for n, valid in ((100, 70), (45, 45)):
        x = torch.randn(2, n, 32)
        mask = torch.ones(2, n, dtype=torch.bool)
        mask[1, valid:] = False
        with torch.no_grad():
            expected, expected_clusters = module(x, mask)
        out, num_clusters = runtime.run(None, {"x": x.numpy(), "key_padding_mask": mask.numpy()})
        assert np.array_equal(num_clusters, expected_clusters.numpy())
        assert max_diff(out, expected) <= 1e-5
        counts.append(expected_clusters)
    assert 1 < int(counts[1].min()) and int(counts[0].max()) < 100  # real clustering, not one cluster or singletons
    assert len({tuple(c.flatten().tolist()) for c in counts}) == 2


@pytest.mark.parametrize("span", [3, 1 << 40], ids=["small-codes", "int64-overflowing-codes"])
def test_traceable_clustering_equals_the_folded_one(span):
    """The traceable way (distinct code rows) and the eager one (folded int64 keys) give the same partition with the
    same numbering, padded pixels included."""
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(-span, span, (2, 3, 40, 6), generator=generator)
    codes[..., 20:, :] = codes[..., :20, :]
    codes[..., :4] = codes[..., :4] % 2
    valid = torch.rand(2, 3, 40, generator=generator) > 0.3
    for args in ((codes, valid), (codes, None), (codes[0, 0], valid[0, 0])):
        folded = adaptive_clusters(*args, traceable=False)
        traceable = adaptive_clusters(*args, traceable=True)
        assert all(torch.equal(a, b) for a, b in zip(folded, traceable))
        assert int(folded[1].min()) < 40  # queries do share clusters
