"""Property tests: the DETR augmentations keep boxes, labels and images consistent."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torchvision.transforms import v2

from detrkit.data.augmentations import AugmentationConfig, RandomSizeCrop, augment, detr_train_transforms

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def images_with_boxes(draw, max_boxes=8):
    """A random (3, H, W) uint8 image and COCO annotations whose boxes lie inside it."""
    height, width = draw(st.integers(24, 160)), draw(st.integers(24, 160))
    annotations = []
    for k in range(draw(st.integers(0, max_boxes))):
        x0 = draw(st.floats(0, width - 2))
        y0 = draw(st.floats(0, height - 2))
        w = draw(st.floats(1, width - x0))
        h = draw(st.floats(1, height - y0))
        annotations.append({"id": 100 + k, "category_id": k % 3, "bbox": [x0, y0, w, h], "area": w * h * 0.7,
                            "iscrowd": 0})
    seed = draw(st.integers(0, 2**31 - 1))
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return image, annotations, seed


def assert_kept_boxes(out, candidates, tol=1e-4):
    """`candidates`: (id, expected box) for every input box, in order. A box whose width or height is at least
    1 pixel must be kept, one under 1 pixel dropped; within `tol` of 1 either is right (the transforms compute
    in float32, this oracle in float64, so exact-boundary sizes may round either way)."""
    must_keep = [i for i, box in candidates if min(box[2:]) >= 1 + tol]
    may_keep = [i for i, box in candidates if min(box[2:]) >= 1 - tol]
    kept = [a["id"] for a in out]
    assert set(must_keep) <= set(kept) <= set(may_keep), (kept, must_keep, may_keep)
    assert kept == [i for i in may_keep if i in kept]  # order kept
    boxes = dict(candidates)
    for ann in out:
        assert ann["bbox"] == pytest.approx(boxes[ann["id"]], abs=1e-3)


def small_recipe(**overrides):
    return AugmentationConfig.for_image_size(96, **overrides)


@SETTINGS
@given(images_with_boxes())
def test_pipeline_keeps_boxes_inside_and_labels_aligned(sample):
    image, annotations, seed = sample
    torch.manual_seed(seed)
    out_image, out = augment(detr_train_transforms(small_recipe()), image, annotations)
    height, width = out_image.shape[-2:]
    assert out_image.dtype == torch.uint8 and out_image.shape[0] == 3
    ids = [a["id"] for a in out]
    assert ids == sorted(ids) and set(ids) <= {a["id"] for a in annotations}  # a subset, order kept
    for ann in out:
        x, y, w, h = ann["bbox"]
        assert w >= 1 and h >= 1  # degenerate leftovers of a crop are dropped
        assert x >= 0 and y >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
        original = next(a for a in annotations if a["id"] == ann["id"])
        assert ann["category_id"] == original["category_id"] == (ann["id"] - 100) % 3  # labels travel with boxes
        assert ann["area"] == pytest.approx(0.7 * w * h, rel=1e-4)  # area scales with its box
    assert max(height, width) <= small_recipe().max_size


@SETTINGS
@given(images_with_boxes(), st.booleans())
def test_resize_and_flip_without_crop_move_every_box_consistently(sample, flip):
    image, annotations, seed = sample
    torch.manual_seed(seed)
    recipe = small_recipe(crop_prob=0.0, flip_prob=1.0 if flip else 0.0)
    out_image, out = augment(detr_train_transforms(recipe), image, annotations)
    height, width = image.shape[-2:]
    new_height, new_width = out_image.shape[-2:]
    assert min(new_height, new_width) in recipe.scales or max(new_height, new_width) <= recipe.max_size
    sx, sy = new_width / width, new_height / height
    candidates = []
    for a in annotations:
        x, y, w, h = a["bbox"]
        x = width - x - w if flip else x
        candidates.append((a["id"], [x * sx, y * sy, w * sx, h * sy]))  # boxes shrunk under a pixel are dropped
    assert_kept_boxes(out, candidates)


@SETTINGS
@given(images_with_boxes())
def test_flip_twice_is_identity(sample):
    image, annotations, _ = sample
    flip = v2.RandomHorizontalFlip(p=1.0)
    once_image, once = augment(flip, image, annotations)
    twice_image, twice = augment(flip, once_image, once)
    assert torch.equal(twice_image, image)
    assert [a["id"] for a in twice] == [a["id"] for a in annotations]
    for a, b in zip(twice, annotations):
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-4)
    if annotations:
        x, _, w, _ = annotations[0]["bbox"]
        assert once[0]["bbox"][0] == pytest.approx(image.shape[-1] - x - w, abs=1e-4)


@SETTINGS
@given(images_with_boxes(), st.integers(8, 64), st.integers(0, 64))
def test_random_size_crop_drops_only_boxes_outside(sample, min_size, extra):
    image, annotations, seed = sample
    torch.manual_seed(seed)
    crop = RandomSizeCrop(min_size, min_size + extra)
    params = crop.make_params([image])
    height, width = image.shape[-2:]
    top, left, h, w = params["top"], params["left"], params["height"], params["width"]
    assert min(min_size, height) <= h <= min(height, min_size + extra) and 0 <= top <= height - h
    assert min(min_size, width) <= w <= min(width, min_size + extra) and 0 <= left <= width - w

    class FixedCrop(v2.Transform):  # the crop above, so that the expected boxes can be computed
        def transform(self, inpt, _):
            return crop.transform(inpt, params)

    pipeline = v2.Compose([FixedCrop(), v2.ClampBoundingBoxes(),
                           v2.SanitizeBoundingBoxes(labels_getter=lambda s: s["annotation_index"])])
    out_image, out = augment(pipeline, image, annotations)
    assert torch.equal(out_image, image[:, top:top + h, left:left + w])
    candidates = []
    for a in annotations:
        x, y, bw, bh = a["bbox"]
        x0, y0 = max(x, left), max(y, top)
        x1, y1 = min(x + bw, left + w), min(y + bh, top + h)
        candidates.append((a["id"], [x0 - left, y0 - top, x1 - x0, y1 - y0]))
    assert_kept_boxes(out, candidates)


def test_recipe_config():
    paper = AugmentationConfig()
    assert paper.scales == (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800) and paper.max_size == 1333
    assert AugmentationConfig.for_image_size(800) == paper
    small = AugmentationConfig.for_image_size(128)
    assert max(small.scales) == 128 and min(small.scales) == round(480 * 0.16) and small.max_size == 213
    assert small.crop_size == (61, 96) and small.eval_size == {"shortest_edge": 128, "longest_edge": 213}
    assert AugmentationConfig.for_image_size(128, crop_prob=0.0).crop_prob == 0.0
    with pytest.raises(ValueError, match="crop_size"):
        AugmentationConfig(crop_size=(600, 384))
    with pytest.raises(ValueError, match="max_size"):
        AugmentationConfig(max_size=500)


def test_segmentation_is_left_out_after_geometric_transforms():
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    annotations = [{"id": 1, "category_id": 0, "bbox": [2, 2, 10, 10], "segmentation": {"counts": "x", "size": [32, 32]}}]
    _, out = augment(v2.RandomHorizontalFlip(p=1.0), image, annotations)
    assert "segmentation" not in out[0] and out[0]["bbox"] == pytest.approx([20, 2, 10, 10])
