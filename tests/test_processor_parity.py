"""detrkit's image processors against transformers' DetrImageProcessor / DeformableDetrImageProcessor (their default
torchvision backend) on the same images and COCO annotations, and on the same fake model outputs."""

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from torch.testing import assert_close

from detrkit.processing import DeformableDetrImageProcessor, DetrImageProcessor

PAIRS = [
    (DetrImageProcessor, transformers.DetrImageProcessor),
    (DeformableDetrImageProcessor, transformers.DeformableDetrImageProcessor),
]
SIZES = [
    {"shortest_edge": 120, "longest_edge": 200},
    {"height": 96, "width": 128},
    {"max_height": 100, "max_width": 150},
]


def random_image(height, width, mode="RGB", seed=0):
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)


def coco_annotation(image_id, height, width, seed=0):
    """Random boxes inside the image plus the awkward cases: a crowd box, a zero-width box, a box sticking out."""
    rng = np.random.default_rng(seed)
    objects = []
    for _ in range(4):
        x, y = rng.uniform(0, width * 0.7), rng.uniform(0, height * 0.7)
        w, h = rng.uniform(2, width - x), rng.uniform(2, height - y)
        objects.append({"bbox": [x, y, w, h], "category_id": int(rng.integers(1, 91)), "area": w * h, "iscrowd": 0})
    objects.append({"bbox": [1.0, 2.0, 10.0, 10.0], "category_id": 3, "area": 100.0, "iscrowd": 1})
    objects.append({"bbox": [5.0, 5.0, 0.0, 10.0], "category_id": 4, "area": 0.0, "iscrowd": 0})
    objects.append({"bbox": [width - 10.0, height - 8.0, 40.0, 30.0], "category_id": 5, "area": 1200.0, "iscrowd": 0})
    return {"image_id": image_id, "annotations": objects}


def mixed_batch():
    """Sizes that need padding both ways, a grayscale and an RGBA image."""
    images = [random_image(60, 80, seed=1), random_image(150, 90, seed=2), random_image(70, 70, "L", seed=3),
              random_image(50, 110, "RGBA", seed=4)]
    annotations = [coco_annotation(i, im.height, im.width, seed=i) for i, im in enumerate(images)]
    return images, annotations


def assert_same_labels(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert set(a.keys()) == set(b.keys())
        for key in b.keys():
            assert a[key].dtype == b[key].dtype, key
            assert_close(a[key], b[key], atol=1e-5, rtol=1e-5, msg=key)


@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS)
@pytest.mark.parametrize("size", SIZES)
def test_padded_batch_matches_transformers(ours_cls, theirs_cls, size):
    """transformers' box convention (normalized over the padded canvas) reproduces its labels exactly."""
    images, annotations = mixed_batch()
    ours = ours_cls(size=size, normalize_boxes_to_padded_image=True)(images, annotations=annotations)
    theirs = theirs_cls(size=size, do_convert_rgb=True)(images, annotations=annotations, return_tensors="pt")
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape
    assert_close(ours["pixel_values"], theirs["pixel_values"], atol=1e-5, rtol=0)
    assert torch.equal(ours["pixel_mask"], theirs["pixel_mask"]) and ours["pixel_mask"].dtype == torch.int64
    assert_same_labels(ours["labels"], theirs["labels"])


@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS)
def test_default_boxes_are_relative_to_each_image(ours_cls, theirs_cls):
    """Default convention (the DETR authors'): a padded batch gives each image the labels transformers gives it
    alone, unpadded (boxes over the resized image, `size` = resized size), and the same pixels in its corner."""
    images, annotations = mixed_batch()
    ours = ours_cls(size=SIZES[0])(images, annotations=annotations)
    theirs = theirs_cls(size=SIZES[0], do_convert_rgb=True)
    for i, (image, annotation) in enumerate(zip(images, annotations)):
        alone = theirs(image, annotations=annotation, return_tensors="pt")
        height, width = alone["pixel_values"].shape[-2:]
        assert_close(ours["pixel_values"][i, :, :height, :width], alone["pixel_values"][0], atol=1e-5, rtol=0)
        assert_same_labels([ours["labels"][i]], alone["labels"])
        assert ours["labels"][i]["size"].tolist() == [height, width]


@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS)
def test_pad_size_and_unconverted_annotations_match_transformers(ours_cls, theirs_cls):
    images, annotations = mixed_batch()
    kwargs = dict(size=SIZES[0], pad_size={"height": 256, "width": 224}, do_convert_annotations=False)
    ours = ours_cls(normalize_boxes_to_padded_image=True, **kwargs)(images, annotations=annotations)
    theirs = theirs_cls(do_convert_rgb=True, **kwargs)(images, annotations=annotations, return_tensors="pt")
    assert ours["pixel_values"].shape == (4, 3, 256, 224)
    assert_close(ours["pixel_values"], theirs["pixel_values"], atol=1e-5, rtol=0)
    assert torch.equal(ours["pixel_mask"], theirs["pixel_mask"])
    assert_same_labels(ours["labels"], theirs["labels"])


def test_array_and_tensor_inputs_match_pil():
    """numpy HWC / CHW, torch CHW / HWC, uint8 and float, single, list and 4-D batch: all one image to the model."""
    pil = random_image(48, 64, seed=5)
    hwc = np.array(pil)
    chw = hwc.transpose(2, 0, 1).copy()
    processor = DetrImageProcessor(size=SIZES[0])
    expected = processor(pil)["pixel_values"]
    theirs = transformers.DetrImageProcessor(size=SIZES[0])(pil, return_tensors="pt")["pixel_values"]
    assert_close(expected, theirs, atol=1e-5, rtol=0)
    batched = (torch.from_numpy(chw)[None], hwc[None], [hwc])
    for image in (hwc, chw, torch.from_numpy(chw), torch.from_numpy(hwc), *batched):
        assert_close(processor(image)["pixel_values"], expected, atol=1e-5, rtol=0)
    # A float image goes through bilinear resize without uint8 rounding: close, not equal.
    as_float = processor(torch.from_numpy(chw).float())["pixel_values"]
    assert_close(as_float, expected, atol=0.02, rtol=0)


def test_public_pad_matches_batched_preprocessing():
    """The collator's path: images processed one by one without padding, then `pad` -> the batched result."""
    images, annotations = mixed_batch()
    for canvas in (False, True):
        processor = DetrImageProcessor(size=SIZES[0], normalize_boxes_to_padded_image=canvas)
        batched = processor(images, annotations=annotations)
        singles = [processor(im, annotations=a, do_pad=False) for im, a in zip(images, annotations)]
        padded = processor.pad([s["pixel_values"][0] for s in singles], annotations=[s["labels"][0] for s in singles])
        assert_close(padded["pixel_values"], batched["pixel_values"], atol=0, rtol=0)
        assert torch.equal(padded["pixel_mask"], batched["pixel_mask"])
        assert_same_labels(padded["labels"], batched["labels"])


def fake_outputs(batch_size=3, queries=12, classes=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch_size, queries, classes, generator=generator) * 3
    pred_boxes = torch.rand(batch_size, queries, 4, generator=generator) * 0.5 + 0.2
    return transformers.utils.ModelOutput(logits=logits, pred_boxes=pred_boxes)


@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS)
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_post_process_object_detection_matches_transformers(ours_cls, theirs_cls, threshold):
    outputs = fake_outputs()
    sizes = [(480, 640), (800, 1066), (33, 57)]
    extra = [{}] if ours_cls is DetrImageProcessor else [{}, {"top_k": 5}, {"top_k": 1000}]
    for target_sizes in (None, sizes, torch.tensor(sizes), torch.IntTensor(sizes)):
        for kwargs in extra:
            ours = ours_cls().post_process_object_detection(outputs, threshold, target_sizes, **kwargs)
            theirs = theirs_cls().post_process_object_detection(outputs, threshold, target_sizes, **kwargs)
            for a, b in zip(ours, theirs, strict=True):
                assert torch.equal(a["labels"], b["labels"])
                assert_close(a["scores"], b["scores"])
                assert_close(a["boxes"], b["boxes"])


def test_deformable_keeps_top_k_over_queries_and_classes():
    outputs = fake_outputs(batch_size=1, queries=4, classes=3)
    outputs.logits[0] = torch.tensor([[5.0, 4.0, -9], [-9, -9, -9], [-9, 3.0, -9], [-9, -9, 6.0]])
    detections = DeformableDetrImageProcessor().post_process_object_detection(outputs, threshold=0.0, top_k=3)[0]
    assert detections["labels"].tolist() == [2, 0, 1]  # query 3 class 2, then query 0 class 0, class 1
    assert_close(detections["scores"], torch.tensor([6.0, 5.0, 4.0]).sigmoid())
    assert_close(detections["boxes"][1], detections["boxes"][2])  # one query, two classes, one box


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_processing_on_cuda_matches_cpu():
    images, annotations = mixed_batch()
    processor = DetrImageProcessor(size=SIZES[0])
    cpu = processor(images, annotations=annotations)
    cuda = processor(images, annotations=annotations, device="cuda")
    assert cuda["pixel_values"].device.type == "cuda"
    # CUDA's bilinear resize rounds uint8 differently from the CPU kernel: at most one grey level apart.
    assert_close(cuda["pixel_values"].cpu(), cpu["pixel_values"], atol=1.01 / 255 / 0.224, rtol=0)
    assert torch.equal(cuda["pixel_mask"].cpu(), cpu["pixel_mask"])
    assert_same_labels(cuda["labels"], cpu["labels"])
