"""Built-in shapes data: deterministic per seed, valid COCO with RLE masks, disjoint class sets A and B."""
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from detrkit.data.builtin.shapes import BUILTIN_DATASETS, builtin_categories, write_builtin_dataset
from detrkit.data.layouts import load_detection_data

# pycocotools decode triggers a numpy 2 DeprecationWarning of its own
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def written(root, name="shapes-a", seed=0, **kwargs):
    kwargs = {"num_train": 6, "num_val": 3, "image_size": 96, **kwargs}
    return write_builtin_dataset(name, root, seed=seed, **kwargs)


def contents(dataset):
    """Every file of a written set, as bytes, keyed by path relative to its root."""
    return {str(p.relative_to(dataset.root)): p.read_bytes() for p in sorted(dataset.root.rglob("*")) if p.is_file()}


def test_deterministic_per_seed(tmp_path):
    first = contents(written(tmp_path / "a1", seed=3))
    again = contents(written(tmp_path / "a2", seed=3))
    other = contents(written(tmp_path / "a3", seed=4))
    assert first == again
    assert first["train/000000.png"] != other["train/000000.png"]
    # an image depends on (seed, split, index) only, not on how many images are asked for
    more = contents(written(tmp_path / "a4", seed=3, num_train=8))
    assert more["train/000005.png"] == first["train/000005.png"]
    assert more["val/000002.png"] == first["val/000002.png"]


def test_classes_of_a_and_b_are_disjoint():
    a = {c["name"] for c in builtin_categories("shapes-a")}
    b = {c["name"] for c in builtin_categories("shapes-b")}
    assert len(a) == 12 and len(b) == 5 and not a & b
    shapes_a = {name.split()[-1] for name in a}
    assert not shapes_a & b  # no shape of B is in A under another colour either
    assert set(BUILTIN_DATASETS) == {"shapes-a", "shapes-b"}
    with pytest.raises(ValueError, match="unknown built-in dataset"):
        builtin_categories("shapes-c")


@pytest.mark.parametrize("name", ["shapes-a", "shapes-b"])
def test_coco_files_are_consistent(tmp_path, name):
    dataset = written(tmp_path, name, num_train=10)
    image_dir, ann_file = dataset.splits["train"]
    coco = json.loads(ann_file.read_text())
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(coco["categories"]) + 1))
    assert len(coco["images"]) == 10
    counts = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=10)
    lo, hi = (1, 8) if name == "shapes-a" else (1, 6)
    assert counts.min() >= lo and counts.max() <= hi
    for ann in coco["annotations"]:
        image = next(i for i in coco["images"] if i["id"] == ann["image_id"])
        assert Image.open(image_dir / image["file_name"]).size == (image["width"], image["height"]) == (96, 96)
        mask = mask_utils.decode({"size": ann["segmentation"]["size"],
                                  "counts": ann["segmentation"]["counts"].encode()})
        ys, xs = np.nonzero(mask)
        # the box is the tight box of the visible mask, the area its pixel count
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["area"] == mask.sum() and ann["iscrowd"] == 0
    # the loaders read it back without a single problem
    data = load_detection_data(dataset.root, split="train")
    assert len(data) == 10 and not data.problems and data.id2label == dataset.id2label


def test_a_has_small_objects_and_masks_do_not_overlap(tmp_path):
    dataset = written(tmp_path, "shapes-a", num_train=40, image_size=128)
    coco = json.loads(dataset.splits["train"][1].read_text())
    areas = np.array([a["area"] for a in coco["annotations"]])
    assert (areas < 32 ** 2).mean() > 0.3 and (areas >= 32 ** 2).any()  # COCO "small" and larger ones
    for image in coco["images"][:10]:
        masks = [mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
                 for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert np.sum(masks, axis=0).max() <= 1  # visible masks partition the covered pixels


def test_reuses_an_existing_set_and_checks_arguments(tmp_path):
    dataset = written(tmp_path)
    marker = dataset.splits["train"][0] / "000000.png"
    stamp = marker.stat().st_mtime_ns
    written(tmp_path)  # same parameters: nothing rewritten
    assert marker.stat().st_mtime_ns == stamp
    written(tmp_path, seed=1)  # different parameters: regenerated
    assert marker.stat().st_mtime_ns != stamp
    with pytest.raises(ValueError, match="image_size"):
        written(tmp_path / "tiny", image_size=16)
