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
import importlib

# name -> the module that defines it; imported on first use (PEP 562) so that `detrkit data check --help` and
# the light modules (records, layouts) do not pay for torch and torchvision
_EXPORTS = {
    "AugmentationConfig": "augmentations", "RandomSizeCrop": "augmentations", "augment": "augmentations",
    "detr_train_transforms": "augmentations",
    "BUILTIN_DATASETS": "builtin", "BUILTIN_PANOPTIC_DATASETS": "builtin", "BuiltinDataset": "builtin",
    "BuiltinPanopticDataset": "builtin", "builtin_categories": "builtin", "write_builtin_dataset": "builtin",
    "write_builtin_panoptic_dataset": "builtin",
    "load_coco": "coco",
    "load_coco_panoptic": "coco_panoptic",
    "DetectionCollator": "collator",
    "DetectionDataset": "dataset", "SkippedImages": "dataset",
    "load_hf_dataset": "hf_datasets",
    "load_hf_panoptic": "hf_panoptic", "semantic_map_to_panoptic": "hf_panoptic",
    "load_imagefolder": "imagefolder",
    "open_image": "images",
    "SplitNotFoundError": "layouts", "discover_splits": "layouts", "load_detection_data": "layouts",
    "PanopticDataset": "panoptic_dataset", "horizontal_flip": "panoptic_dataset",
    "InvalidPanopticDataError": "panoptic_records", "PanopticData": "panoptic_records", "PanopticRecord":
    "panoptic_records",
    "InvalidDatasetError": "problems", "Problem": "problems",
    "RecordTable": "record_table",
    "Categories": "records", "DetectionData": "records", "DetectionRecord": "records",
    "load_voc": "voc",
    "load_yolo": "yolo",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = list(_EXPORTS)
