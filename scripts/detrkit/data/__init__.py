"""detrkit.data: detection and panoptic data in one common form, read from any supported layout.

Data flows one way: each reader turns its layout into records (checked by validation, cached as an Arrow table);
``layouts.py`` finds the layout of a source and calls its reader; the datasets encode records with the image
processor, augmentations transform them, the collator batches them.

records.py            DetectionRecord, Categories, DetectionData: the common form of detection data
problems.py           Problem, InvalidDatasetError: what is wrong with a data set
images.py             image references (path, PIL, datasets bytes/rows), opened upright; sizes from headers
validation.py         checking raw records; on_error="raise" | "skip" decides what to keep
record_table.py       the records as one Arrow table, memory-mapped and shared by processes
cache.py              the on-disk cache of validated records, keyed by the source files
json_stream.py        JSON parsing that transforms big arrays element by element (COCO polygons)
coco.py / hf_datasets.py / imagefolder.py / yolo.py / voc.py   one reader per layout
objects_column.py     the `objects` column the datasets and imagefolder readers share
layouts.py            finding a source's layout and splits; load_detection_data
sources.py            `--data` as every command reads it (built-in set names included) and one split's records
dataset.py            DetectionDataset: decode, augment, encode with the image processor
augmentations.py      the DETR training augmentations (box-aware torchvision v2)
collator.py           DetectionCollator: pad a batch
panoptic_records.py   PanopticRecord, PanopticData; readers coco_panoptic.py and hf_panoptic.py
panoptic_dataset.py   PanopticDataset (+ horizontal_flip for image and segment map together)
builtin/              the built-in synthetic sets (shapes-a, shapes-b and their panoptic versions)
check.py              the `detrkit data check` command
"""
from .augmentations import AugmentationConfig, RandomSizeCrop, augment, detr_train_transforms
from .builtin import (
    BUILTIN_DATASETS, BUILTIN_PANOPTIC_DATASETS, BuiltinDataset, BuiltinPanopticDataset, builtin_categories,
    write_builtin_dataset, write_builtin_panoptic_dataset,
)
from .coco import load_coco
from .coco_panoptic import load_coco_panoptic
from .collator import DetectionCollator
from .dataset import DetectionDataset, SkippedImages
from .hf_datasets import load_hf_dataset
from .hf_panoptic import load_hf_panoptic, semantic_map_to_panoptic
from .imagefolder import load_imagefolder
from .images import open_image
from .layouts import SplitNotFoundError, discover_splits, load_detection_data
from .panoptic_dataset import PanopticDataset, horizontal_flip
from .panoptic_records import InvalidPanopticDataError, PanopticData, PanopticRecord
from .problems import InvalidDatasetError, Problem
from .record_table import RecordTable
from .records import Categories, DetectionData, DetectionRecord
from .voc import load_voc
from .yolo import load_yolo

__all__ = [
    "AugmentationConfig", "RandomSizeCrop", "augment", "detr_train_transforms", "DetectionCollator", "Categories",
    "DetectionData", "DetectionRecord", "InvalidDatasetError", "Problem", "load_coco", "load_detection_data",
    "load_hf_dataset", "load_imagefolder", "load_voc", "load_yolo", "discover_splits", "SplitNotFoundError",
    "RecordTable", "DetectionDataset", "SkippedImages", "open_image", "BUILTIN_DATASETS", "BuiltinDataset",
    "builtin_categories", "write_builtin_dataset", "InvalidPanopticDataError", "PanopticData", "PanopticRecord",
    "PanopticDataset", "horizontal_flip", "load_coco_panoptic", "load_hf_panoptic", "semantic_map_to_panoptic",
    "BUILTIN_PANOPTIC_DATASETS", "BuiltinPanopticDataset", "write_builtin_panoptic_dataset",
]
