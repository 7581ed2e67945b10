"""The label slots of the official COCO checkpoints.

DETR and Deformable DETR classify COCO's raw category ids, 1..90, in a head of 91 slots (slot 0 and the ten ids
COCO never used stay empty, named "N/A" as in transformers' converted checkpoints). torchvision keeps that exact
91-slot list for its COCO detectors; only its slot 0 name differs.
"""

from torchvision.models._meta import _COCO_CATEGORIES

NUM_COCO_SLOTS = 91


def coco_detection_id2label() -> dict[int, str]:
    names = ["N/A", *_COCO_CATEGORIES[1:]]  # torchvision says "__background__" where DETR's slot 0 is unused
    if len(names) != NUM_COCO_SLOTS:
        raise RuntimeError(f"torchvision's COCO category list has {len(names)} entries, expected {NUM_COCO_SLOTS}")
    return dict(enumerate(names))
