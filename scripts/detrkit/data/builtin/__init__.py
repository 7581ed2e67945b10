"""Built-in data sets, drawn from a seed and written the way user data arrives (COCO / COCO panoptic files).

shape_drawing.py    the shapes, their colour styles, and painting them onto a background
shapes.py           shapes-a / shapes-b: detection sets in COCO layout (boxes + RLE instance masks)
panoptic_shapes.py  shapes-b-panoptic / shapes-a-panoptic: the same objects over stuff bands, COCO panoptic layout
"""
from .shape_drawing import draw_image
from .panoptic_shapes import BUILTIN_PANOPTIC_DATASETS, BuiltinPanopticDataset, write_builtin_panoptic_dataset
from .shapes import BUILTIN_DATASETS, BuiltinDataset, builtin_categories, write_builtin_dataset

__all__ = ["BUILTIN_DATASETS", "BUILTIN_PANOPTIC_DATASETS", "BuiltinDataset", "BuiltinPanopticDataset",
           "builtin_categories", "draw_image", "write_builtin_dataset", "write_builtin_panoptic_dataset"]
