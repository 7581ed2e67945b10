"""Mask annotations through detrkit's DetrImageProcessor: COCO panoptic PNGs and COCO instance polygons / RLE to
`labels["masks"]` at the processed, padded size, equal to transformers' processor; and the errors for maps and
ids that do not match."""

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from pycocotools import mask as mask_utils

from detrkit.processing import DetrImageProcessor
from detrkit.processing.segmentation_annotations import (
    SegmentationAnnotationError, id_to_rgb, masks_to_boxes, rgb_to_id,
)

SIZE = {"shortest_edge": 90, "longest_edge": 200}


def panoptic_example(tmp_path, height=60, width=80, name="a.png"):
    """An image, its panoptic PNG (ids above 255 and above 65535 exercise all three colour channels) and the
    annotation; segment 66000 is a crowd region."""
    ids = np.zeros((height, width), np.int64)
    ids[5:30, 10:50] = 7
    ids[30:, :] = 1000
    ids[0:5, width - 10:] = 66000
    Image.fromarray(id_to_rgb(ids)).save(tmp_path / name)
    image = Image.fromarray(np.random.default_rng(height).integers(0, 255, (height, width, 3), dtype=np.uint8))
    annotation = {"image_id": height, "file_name": name, "segments_info": [
        {"id": 7, "category_id": 1, "iscrowd": 0, "area": float((ids == 7).sum())},
        {"id": 1000, "category_id": 5, "iscrowd": 0, "area": float((ids == 1000).sum())},
        {"id": 66000, "category_id": 2, "iscrowd": 1, "area": float((ids == 66000).sum())},
    ]}
    return image, annotation, ids


def assert_labels_equal(ours, theirs):
    for key in ("masks", "class_labels", "iscrowd", "image_id", "orig_size"):
        assert torch.equal(ours[key], torch.as_tensor(theirs[key])), key
    torch.testing.assert_close(ours["boxes"], theirs["boxes"])
    torch.testing.assert_close(ours["area"], theirs["area"])


def test_rgb_id_round_trip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 123456, 256 ** 3 - 1]])
    assert np.array_equal(rgb_to_id(id_to_rgb(ids)), ids)
    assert rgb_to_id(np.array([[[1, 2, 3]]], np.uint8))[0, 0] == 1 + 256 * 2 + 65536 * 3


def test_panoptic_labels_equal_transformers(tmp_path):
    """Two images of different sizes: resized, padded, boxes normalized over the padded canvas (transformers'
    convention); masks padded with zeros like the image."""
    first, first_annotation, _ = panoptic_example(tmp_path, 60, 80, "a.png")
    second, second_annotation, second_ids = panoptic_example(tmp_path, 70, 50, "b.png")
    kwargs = dict(annotations=[first_annotation, second_annotation], format="coco_panoptic", masks_path=tmp_path,
                  size=SIZE, return_tensors="pt")
    ours = DetrImageProcessor(normalize_boxes_to_padded_image=True)([first, second], **kwargs)
    theirs = transformers.DetrImageProcessor()([first, second], **kwargs)
    assert ours["labels"][0]["masks"].shape == (3, *ours["pixel_values"].shape[-2:])
    for a, b in zip(ours["labels"], theirs["labels"]):
        assert_labels_equal(a, b)
    # The padded part of the second image's masks is empty; each mask is its segment, resized.
    masks = ours["labels"][1]["masks"]
    assert not masks[..., ours["pixel_mask"][1] == 0].any()
    covered = masks.any(0)[ours["pixel_mask"][1] == 1].float().mean()  # all but void (id 0), resized
    assert abs(covered - (second_ids != 0).mean()) < 0.02


def test_panoptic_map_in_the_annotation(tmp_path):
    """`panoptic_map` (ids or RGB array, or PIL image) instead of a PNG under masks_path: the same labels."""
    image, annotation, ids = panoptic_example(tmp_path)
    processor = DetrImageProcessor()
    expected = processor(image, annotations=annotation, format="coco_panoptic", masks_path=tmp_path)["labels"][0]
    for panoptic_map in (ids, id_to_rgb(ids), Image.fromarray(id_to_rgb(ids))):
        given = dict(annotation, panoptic_map=panoptic_map)
        labels = processor(image, annotations=given, format="coco_panoptic")["labels"][0]
        assert torch.equal(labels["masks"], expected["masks"]) and torch.equal(labels["boxes"], expected["boxes"])
    no_masks = processor(image, annotations=annotation, format="coco_panoptic", masks_path=tmp_path,
                         return_segmentation_masks=False)["labels"][0]
    assert "masks" not in no_masks and len(no_masks["boxes"]) == 3


def test_masks_to_boxes_last_pixel_convention():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4, 7] = True
    assert masks_to_boxes(masks).tolist() == [[2, 1, 4, 2], [7, 4, 7, 4], [0, 0, 0, 0]]


def polygon_objects(height, width):
    return [
        {"bbox": [10, 5, 30, 20], "category_id": 3, "area": 600.0, "iscrowd": 0,
         "segmentation": [[10, 5, 40, 5, 40, 25, 10, 25]]},
        {"bbox": [2, 30, 20, 25], "category_id": 7, "area": 250.0, "iscrowd": 0,
         "segmentation": [[2, 30, 22, 30, 12, 55], [30, 40, 35, 40, 35, 45]]},  # two parts
    ]


def test_instance_polygons_equal_transformers():
    image = Image.fromarray(np.zeros((60, 80, 3), np.uint8))
    annotation = {"image_id": 1, "annotations": polygon_objects(60, 80)}
    kwargs = dict(annotations=annotation, return_segmentation_masks=True, size=SIZE, return_tensors="pt")
    ours = DetrImageProcessor(normalize_boxes_to_padded_image=True)(image, **kwargs)["labels"][0]
    theirs = transformers.DetrImageProcessor()(image, **kwargs)["labels"][0]
    assert_labels_equal(ours, theirs)
    assert ours["masks"].sum() > 0


def test_instance_rle_forms_equal_polygons():
    """Compressed RLE (bytes or str counts) and uncompressed RLE give the polygon's mask."""
    objects = polygon_objects(60, 80)
    polygon_masks = DetrImageProcessor()(np.zeros((60, 80, 3), np.uint8), annotations={"image_id": 1, "annotations":
                                         objects}, return_segmentation_masks=True, do_resize=False)["labels"][0]
    for form in ("bytes", "str", "uncompressed"):
        converted = []
        for obj in objects:
            rle = mask_utils.merge(mask_utils.frPyObjects(obj["segmentation"], 60, 80))
            if form == "str":
                rle = dict(rle, counts=rle["counts"].decode())
            elif form == "uncompressed":
                flat = mask_utils.decode(rle).flatten(order="F")
                edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])) != 0)
                rle = {"size": [60, 80], "counts": np.diff(np.concatenate([[0], edges])).tolist()}
                if flat[0]:  # uncompressed RLE starts with a run of zeros
                    rle["counts"] = [0] + rle["counts"]
            converted.append(dict(obj, segmentation=rle))
        labels = DetrImageProcessor()(np.zeros((60, 80, 3), np.uint8), annotations={"image_id": 1, "annotations":
                                      converted}, return_segmentation_masks=True, do_resize=False)["labels"][0]
        assert torch.equal(labels["masks"], polygon_masks["masks"]), form


def test_crowd_objects_drop_their_masks_too():
    objects = polygon_objects(60, 80)
    objects[0]["iscrowd"] = 1
    labels = DetrImageProcessor()(np.zeros((60, 80, 3), np.uint8), annotations={"image_id": 1, "annotations": objects},
                                  return_segmentation_masks=True, do_resize=False)["labels"][0]
    assert labels["class_labels"].tolist() == [7] and labels["masks"].shape == (1, 60, 80)
    assert labels["masks"][0, 30:56, 2:23].any() and not labels["masks"][0, 5:25, 10:40].any()


def test_collator_pad_pads_masks(tmp_path):
    image, annotation, _ = panoptic_example(tmp_path)
    processor = DetrImageProcessor()
    item = processor(image, annotations=annotation, format="coco_panoptic", masks_path=tmp_path, do_pad=False,
                     do_resize=False)
    batch = processor.pad([item["pixel_values"][0]], annotations=[dict(item["labels"][0])], pad_size={"height": 100,
                                                                                                     "width": 150})
    masks = batch["labels"][0]["masks"]
    assert masks.shape == (3, 100, 150) and torch.equal(masks[:, :60, :80], item["labels"][0]["masks"])
    assert not masks[:, 60:].any() and not masks[:, :, 80:].any()


@pytest.mark.parametrize("case, message", [
    ("missing_in_map", r"image 0 \(id 60\): segment id 8 of segments_info is not in the panoptic map"),
    ("missing_in_json", r"image 0 \(id 60\): segment id 1000 is in the panoptic map but not in segments_info"),
    ("duplicate", r"segment id 7 appears twice"),
    ("void_id", r"segment id 0 is VOID"),
    ("size", r"the panoptic map is 80x60 but the image is 40x30"),
    ("no_file", r"panoptic PNG not found: .*nothing.png"),
    ("no_masks_path", r"masks_path .* is needed"),
    ("no_segments_info", r"expected COCO panoptic format"),
    ("gray_png", r"must be RGB"),
])
def test_mismatched_maps_and_ids_are_named(tmp_path, case, message):
    image, annotation, ids = panoptic_example(tmp_path)
    segments = annotation["segments_info"]
    kwargs = dict(format="coco_panoptic", masks_path=tmp_path)
    if case == "missing_in_map":
        annotation["segments_info"] = segments + [{"id": 8, "category_id": 1}]
    elif case == "missing_in_json":
        annotation["segments_info"] = [s for s in segments if s["id"] != 1000]
    elif case == "duplicate":
        annotation["segments_info"] = segments + [dict(segments[0])]
    elif case == "void_id":
        annotation["segments_info"] = segments + [{"id": 0, "category_id": 1}]
    elif case == "size":
        image = image.resize((40, 30))
    elif case == "no_file":
        annotation["file_name"] = "nothing.png"
    elif case == "no_masks_path":
        kwargs.pop("masks_path")
    elif case == "no_segments_info":
        annotation = {"image_id": 1, "annotations": []}
    elif case == "gray_png":
        annotation["panoptic_map"] = Image.fromarray(ids.astype(np.uint8))
    with pytest.raises(SegmentationAnnotationError, match=message):
        DetrImageProcessor()(image, annotations=annotation, **kwargs)


def test_bad_instance_segmentation_is_named():
    objects = polygon_objects(60, 80)
    image = np.zeros((60, 80, 3), np.uint8)
    with pytest.raises(SegmentationAnnotationError, match="image 0, annotation 1: a polygon has fewer than 3 points"):
        DetrImageProcessor()(image, annotations={"image_id": 1, "annotations": [objects[0], dict(
            objects[1], segmentation=[[1, 2, 3, 4]])]}, return_segmentation_masks=True)
    with pytest.raises(SegmentationAnnotationError, match=r"annotation 0: RLE size \[10, 10\] does not match"):
        DetrImageProcessor()(image, annotations={"image_id": 1, "annotations": [dict(
            objects[0], segmentation={"size": [10, 10], "counts": [100]})]}, return_segmentation_masks=True)
    without = dict(objects[0])
    del without["segmentation"]
    with pytest.raises(SegmentationAnnotationError, match="annotation 0: no 'segmentation' field"):
        DetrImageProcessor()(image, annotations={"image_id": 1, "annotations": [without]},
                             return_segmentation_masks=True)
