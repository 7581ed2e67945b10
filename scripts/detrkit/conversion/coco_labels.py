"""The label slots of the official COCO checkpoints (detection: 91, panoptic: 250).

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


# COCO panoptic's stuff categories (panopticapi's panoptic_coco_categories.json): id -> name. Its things are the
# 80 detection categories at their detection ids; official DETR counts every id <= 90 as a thing
# (`is_thing_map = {i: i <= 90 ...}` in its models/detr.py), every other as stuff.
COCO_PANOPTIC_STUFF = {
    92: "banner", 93: "blanket", 95: "bridge", 100: "cardboard", 107: "counter", 109: "curtain", 112: "door-stuff",
    118: "floor-wood", 119: "flower", 122: "fruit", 125: "gravel", 128: "house", 130: "light", 133: "mirror-stuff",
    138: "net", 141: "pillow", 144: "platform", 145: "playingfield", 147: "railroad", 148: "river", 149: "road",
    151: "roof", 154: "sand", 155: "sea", 156: "shelf", 159: "snow", 161: "stairs", 166: "tent", 168: "towel",
    171: "wall-brick", 175: "wall-stone", 176: "wall-tile", 177: "wall-wood", 178: "water-other",
    180: "window-blind", 181: "window-other", 184: "tree-merged", 185: "fence-merged", 186: "ceiling-merged",
    187: "sky-other-merged", 188: "cabinet-merged", 189: "table-merged", 190: "floor-other-merged",
    191: "pavement-merged", 192: "mountain-merged", 193: "grass-merged", 194: "dirt-merged", 195: "paper-merged",
    196: "food-other-merged", 197: "building-other-merged", 198: "rock-merged", 199: "wall-other-merged",
    200: "rug-merged",
}
NUM_PANOPTIC_SLOTS = 250  # official DETR's class head for coco_panoptic (ids up to 200, rounded up)


def coco_panoptic_id2label() -> dict[int, str]:
    """250 slots: the 80 things and 53 stuff categories at their COCO panoptic ids, "N/A" elsewhere."""
    labels = {i: "N/A" for i in range(NUM_PANOPTIC_SLOTS)}
    labels.update({i: name for i, name in coco_detection_id2label().items() if name != "N/A"})
    labels.update(COCO_PANOPTIC_STUFF)
    return labels


def coco_panoptic_stuff_ids() -> list[int]:
    """Label ids whose segments are fused per class in panoptic post-processing (`label_ids_to_fuse`)."""
    return sorted(COCO_PANOPTIC_STUFF)
