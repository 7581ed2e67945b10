"""The mask-head step on cached detector outputs (detrkit.training.frozen_detector_cache): with the detector frozen,
one optimisation batch gives the same mask losses and the same gradients as the model's own forward, for DETR and
Deformable DETR, with images of different sizes in the cache; and the size guard names the option to turn it off."""

import pytest
import torch
from helpers import SMALL

from detrkit.modeling import (
    DeformableDetrConfig,
    DeformableDetrForSegmentation,
    DetrConfig,
    DetrForSegmentation,
)
from detrkit.processing import DetrImageProcessor
from detrkit.data.collator import DetectionCollator
from detrkit.errors import UsageError
from detrkit.training.frozen_detector_cache import FrozenDetectorCache, collate_cached, head_loss

TINY = dict(SMALL, encoder_attention_heads=8, decoder_attention_heads=8, d_model=32, encoder_ffn_dim=64,
            decoder_ffn_dim=64, num_queries=12, num_labels=3)


def _items(sizes):
    """Items as a dataset gives them: an image (3, H, W) and labels with boxes and masks at its size."""
    g = torch.Generator().manual_seed(0)
    items = []
    for height, width in sizes:
        masks = torch.zeros(2, height, width)
        masks[0, : height // 2, : width // 3] = 1
        masks[1, height // 3 :, width // 2 :] = 1
        boxes = torch.tensor([[1 / 6, 0.25, 1 / 3, 0.5], [0.75, 2 / 3, 0.5, 2 / 3]])
        items.append({"pixel_values": torch.randn(3, height, width, generator=g),
                      "labels": {"class_labels": torch.tensor([0, 2]), "boxes": boxes, "masks": masks,
                                 "size": torch.tensor([height, width]), "orig_size": torch.tensor([height, width])}})
    return items


def _model(kind):
    if kind == "detr":
        model = DetrForSegmentation(DetrConfig(**TINY, freeze_detector=True))
    else:
        model = DeformableDetrForSegmentation(DeformableDetrConfig(**TINY, num_feature_levels=2, freeze_detector=True))
    torch.manual_seed(0)
    with torch.no_grad():  # a head that is not at its (symmetric) initialisation
        for p in list(model.bbox_attention.parameters()) + list(model.mask_head.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("kind", ["detr", "deformable"])
def test_cached_batch_gives_the_forward_losses_and_gradients(kind):
    model = _model(kind)
    collator = DetectionCollator(DetrImageProcessor(do_normalize=False))
    items = _items([(64, 64), (64, 64)])

    model.train()
    batch = collator(items)
    outputs = model(**batch)
    reference_loss = outputs.loss_dict["loss_mask"] + outputs.loss_dict["loss_dice"]  # coefficients are 1
    reference_loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    cache = FrozenDetectorCache.build(model, items, collator, batch_size=2, max_bytes=2**30, log=lambda *a: None)
    model.train()
    loss, terms = head_loss(model, *collate_cached([cache[0], cache[1]]))
    loss.backward()
    torch.testing.assert_close(terms["loss_mask"], outputs.loss_dict["loss_mask"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["loss_dice"], outputs.loss_dict["loss_dice"], rtol=1e-5, atol=1e-6)
    assert expected and all(not p.requires_grad for p in model.detr.parameters())
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_images_of_different_sizes_are_cached_unpadded_and_batched_padded():
    model = _model("deformable")
    collator = DetectionCollator(DetrImageProcessor(do_normalize=False))
    items = _items([(64, 64), (64, 96), (64, 64)])
    cache = FrozenDetectorCache.build(model, items, collator, batch_size=4, max_bytes=2**30, log=lambda *a: None)
    assert len(cache) == 3
    widths = sorted(item["masks"].shape[-1] for item in cache.items)
    assert widths == [64, 64, 96]  # each image at its own size: no padding for another image
    assert all(item["valid"].all() for item in cache.items)
    fields, labels, indices = collate_cached(cache.items)
    assert fields["valid"].shape[0] == 3 and not fields["valid"].all()  # the narrow images padded, marked invalid
    assert {tuple(label["masks"].shape[-2:]) for label in labels} == {(64, 96)}
    loss, _ = head_loss(model, fields, labels, indices)
    assert torch.isfinite(loss)


def test_cache_over_its_limit_names_the_option():
    model = _model("detr")
    collator = DetectionCollator(DetrImageProcessor(do_normalize=False))
    with pytest.raises(UsageError, match="cache_detector_outputs: false"):
        FrozenDetectorCache.build(model, _items([(64, 64)] * 2), collator, batch_size=1, max_bytes=1000,
                                  log=lambda *a: None)
