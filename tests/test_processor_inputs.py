"""Image processor inputs: files, bytes, EXIF orientation, channel handling, annotation conventions, and every kind
of bad input raising DetrProcessingError with a message that names the image, annotation and field."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from detrkit.processing import DeformableDetrImageProcessor, DetrImageProcessor, DetrProcessingError

SIZE = {"shortest_edge": 64, "longest_edge": 96}


@pytest.fixture(scope="module")
def processor():
    return DetrImageProcessor(size=SIZE)


def image(height=40, width=60, seed=0, channels=3):
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def annotation(*objects, image_id=1):
    return {"image_id": image_id, "annotations": list(objects)}


def box(bbox, category_id=1, **extra):
    return {"bbox": bbox, "category_id": category_id, **extra}


def jpeg_bytes(array, orientation=None):
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(array).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_orientation_is_applied(tmp_path, processor):
    """A 40x60 JPEG tagged "rotate 90 CW" (orientation 6) is a 60x40 picture; as file, bytes and PIL image."""
    array = image(40, 60)
    array[:10, :10] = 255  # a white top-left corner that must end up top-right after the rotation
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg_bytes(array, orientation=6))
    unpadded = dict(do_resize=False, do_normalize=False, do_rescale=False)
    for source in (str(path), path, path.read_bytes(), Image.open(path)):
        pixels = processor(source, **unpadded)["pixel_values"][0]
        assert pixels.shape == (3, 60, 40)
        assert pixels[:, :8, -8:].mean() > 240 and pixels[:, :8, :8].mean() < 200
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(jpeg_bytes(array))
    assert processor(str(plain), **unpadded)["pixel_values"].shape == (1, 3, 40, 60)


def test_exif_rotation_and_annotations_use_the_rotated_size(tmp_path, processor):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg_bytes(image(40, 60), orientation=6))  # 40 wide, 60 high once rotated
    labels = processor(str(path), annotations=annotation(box([0, 0, 40, 60])))["labels"][0]
    assert labels["orig_size"].tolist() == [60, 40]
    assert labels["boxes"].tolist() == [[0.5, 0.5, 1.0, 1.0]]


def test_gray_and_rgba_become_rgb(processor):
    gray = image(channels=1)[..., 0]
    expected = processor(np.repeat(gray[..., None], 3, -1))["pixel_values"]
    for variant in (gray, gray[None], Image.fromarray(gray, "L"), torch.from_numpy(gray)):
        torch.testing.assert_close(processor(variant)["pixel_values"], expected)
    rgba = image(channels=4)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # one transparent pixel goes white, as in transformers
    pixels = processor(rgba, do_resize=False, do_normalize=False)["pixel_values"][0]
    assert pixels[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(pixels[:, 1:, 1:], torch.from_numpy(rgba[1:, 1:, :3]).permute(2, 0, 1) / 255.0)
    assert processor(Image.fromarray(rgba, "RGBA"))["pixel_values"].shape[1] == 3


def test_crowd_degenerate_and_partly_outside_boxes(processor):
    """Crowd, zero-size and outside boxes are dropped, a box sticking out is clipped, all in the documented way."""
    objects = [
        box([10, 10, 20, 20], 1, iscrowd=0, area=400.0),
        box([10, 10, 20, 20], 2, iscrowd=1),
        box([10, 10, 0, 20], 3),  # zero width
        box([50, 30, 30, 30], 4),  # 10x10 inside a 60x40 image after clipping
        box([0, 40, 5, 0], 5),  # zero height, on the bottom border
        box([100, 2, 3, 4], 6), box([-10, 2, 5, 4], 7),  # entirely outside: zero size once clipped
    ]
    labels = processor(image(40, 60), annotations=annotation(*objects), do_resize=False)["labels"][0]
    assert labels["class_labels"].tolist() == [1, 4]
    assert labels["iscrowd"].tolist() == [0, 0]
    torch.testing.assert_close(labels["boxes"][1], torch.tensor([55 / 60, 35 / 40, 10 / 60, 10 / 40]))
    assert labels["area"].tolist() == [400.0, 900.0]  # area missing -> w * h of the given box
    empty = processor(image(), annotations=annotation())["labels"][0]
    assert empty["boxes"].shape == (0, 4) and empty["class_labels"].shape == (0,)


BAD_ANNOTATIONS = [
    (annotation(box([1, 2, 3])), r"image 0, annotation 0: 'bbox' must be 4 numbers"),
    (annotation(box([1, 2, 3, 4]), box([1, 2, 3, 4, 5])), r"image 0, annotation 1: 'bbox' must be 4 numbers"),
    (annotation(box([1, 2, -3, 4])), r"annotation 0: .*negative width or height"),
    (annotation(box([1, 2, 3, -4])), r"annotation 0: .*negative width or height"),
    (annotation(box([1, float("nan"), 3, 4])), r"annotation 0: 'bbox' has NaN or inf"),
    (annotation(box([1, 2, float("inf"), 4])), r"annotation 0: 'bbox' has NaN or inf"),
    (annotation(box(["a", 2, 3, 4])), r"annotation 0: 'bbox' must be 4 numbers"),
    (annotation(box({1, 2, 3, 4})), r"annotation 0: 'bbox' must be 4 numbers"),
    (annotation(box([1, 2, 3, 4], category_id="a")), r"annotation 0: non-numeric"),
    (annotation(box("1234")), r"'bbox' must be 4 numbers"),
    (annotation({"category_id": 1, "segmentation": [[1, 2, 3, 4, 5, 6]]}), r"no 'bbox' .*segmentation-only"),
    (annotation({"bbox": [1, 2, 3, 4]}), r"annotation 0: no 'category_id'"),
    ({"image_id": 1}, r"annotation of image 0: expected COCO detection format"),
    ({"annotations": []}, r"annotation of image 0: expected COCO detection format"),
    ({"image_id": 1, "file_name": "x.png", "segments_info": []},
     r"for COCO panoptic annotations pass format='coco_panoptic'"),
    ({"image_id": 1, "annotations": {"bbox": [1, 2, 3, 4]}}, r"image 0: 'annotations' must be a list"),
    ({"image_id": "cat.jpg", "annotations": []}, r"annotation of image 0: 'image_id' must be an integer"),
    ([[box([1, 2, 3, 4])]], r"annotation of image 0: expected COCO detection format"),
]


@pytest.mark.parametrize("bad, message", BAD_ANNOTATIONS)
def test_bad_annotations_are_named(processor, bad, message):
    with pytest.raises(DetrProcessingError, match=message):
        processor(image(40, 60), annotations=bad)


def test_bad_annotation_in_a_batch_names_its_image(processor):
    good = annotation(box([1, 2, 3, 4]))
    with pytest.raises(DetrProcessingError, match=r"image 2, annotation 1: .*negative"):
        processor([image()] * 3, annotations=[good, good, annotation(box([1, 2, 3, 4]), box([1, 2, -1, 4]))])


def test_image_annotation_count_mismatch(processor):
    with pytest.raises(DetrProcessingError, match=r"3 images but 2 annotations"):
        processor([image()] * 3, annotations=[annotation()] * 2)
    with pytest.raises(DetrProcessingError, match=r"2 images but 1 annotations"):
        processor.pad([torch.zeros(3, 4, 4)] * 2, annotations=[{}])


def test_bad_images_are_named(tmp_path, processor):
    empty, truncated, text = tmp_path / "empty.jpg", tmp_path / "truncated.jpg", tmp_path / "notes.jpg"
    empty.write_bytes(b"")
    truncated.write_bytes(jpeg_bytes(image(64, 64))[:300])
    text.write_text("not an image")
    cases = [
        ([image(), str(empty)], r"image 1 \(.*empty.jpg\): cannot decode"),
        ([str(truncated)], r"image 0 \(.*truncated.jpg\): cannot decode"),
        ([image(), image(), text], r"image 2 \(.*notes.jpg\): cannot decode"),
        ([b""], r"image 0 \(0 bytes\): cannot decode"),
        ([jpeg_bytes(image())[:200]], r"image 0 \(200 bytes\): cannot decode"),
        ([str(tmp_path / "missing.jpg")], r"image 0: file not found: .*missing.jpg"),
        ([image(), np.zeros((40, 60, 2), np.uint8)], r"image 1 has shape \(40, 60, 2\).*2-channel images are not"),
        ([np.zeros((5, 40, 60), np.uint8)], r"image 0 has shape \(5, 40, 60\)"),
        ([np.zeros((2, 3, 40, 60, 1), np.uint8)], r"image 0 has shape \(2, 3, 40, 60, 1\)"),
        ([np.zeros((0, 60, 3), np.uint8)], r"image 0 is empty"),
        ([image(), {"not": "an image"}], r"image 1 is a dict"),
        ([], r"no images given"),
    ]
    for images, message in cases:
        with pytest.raises(DetrProcessingError, match=message):
            processor(images)


def test_other_bad_arguments(processor):
    with pytest.raises(DetrProcessingError, match=r"annotation format 'pascal_voc' is not supported"):
        processor(image(), format="pascal_voc")
    with pytest.raises(DetrProcessingError, match=r"image 1 of size 64x96 .* does not fit pad_size \(64, 64\)"):
        processor([image(40, 40), image()], pad_size={"height": 64, "width": 64})
    with pytest.raises(DetrProcessingError, match=r"different sizes after resizing and do_pad=False"):
        processor([image(40, 40), image()], do_pad=False)
    outputs = {"logits": torch.zeros(2, 5, 3), "pred_boxes": torch.zeros(2, 5, 4)}
    with pytest.raises(DetrProcessingError, match=r"target_sizes .* expected shape \(2, 2\), got \(3, 2\)"):
        processor.post_process_object_detection(outputs, target_sizes=[(1, 1)] * 3)
    with pytest.raises(DetrProcessingError, match=r"expected logits \(B, Q, C\) and pred_boxes \(B, Q, 4\)"):
        DeformableDetrImageProcessor().post_process_object_detection({"logits": torch.zeros(2, 5, 3),
                                                                      "pred_boxes": torch.zeros(2, 4, 4)})


def test_same_size_batch_without_padding_has_no_mask(processor):
    out = processor([image(), image(seed=1)], do_pad=False)
    assert out["pixel_values"].shape == (2, 3, 64, 96) and "pixel_mask" not in out
