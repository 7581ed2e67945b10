"""`--data` -> validated train / eval records, encoded datasets and the collator.

`--data` is a built-in set name ("shapes-a", "shapes-b": generated into `data_cache` on first use), or anything
detrkit.processing's `load_detection_data` reads: a COCO folder or json, a YOLO folder with data.yaml, a Pascal
VOC folder, an imagefolder with metadata.jsonl, a `datasets` folder written by `save_to_disk`, or a Hub dataset
id (`owner/name` or `name`) with an `objects` column. Split names are found by themselves (`val` also finds
`valid`, `validation`, `val2017`). Every bad record is reported with its image id and skipped or fatal as
`invalid_records` says; images that fail to decode later, in a DataLoader worker, are skipped and counted in
`TrainingData.skipped_images()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detrkit.processing.augmentations import AugmentationConfig, detr_train_transforms
from detrkit.processing.coco_metric import coco_evaluate
from detrkit.processing.collator import DetectionCollator
from detrkit.processing.data_layouts import SplitNotFoundError, open_source
from detrkit.processing.detection_data import DetectionData, load_detection_data
from detrkit.processing.detection_dataset import DetectionDataset
from detrkit.processing.synthetic_shapes import BUILTIN_DATASETS, write_builtin_dataset

from .config import TrainConfig


@dataclass
class TrainingData:
    train: DetectionDataset
    eval: DetectionDataset
    eval_records: DetectionData
    id2label: dict[int, str]
    collate_fn: DetectionCollator

    def skipped_images(self) -> dict[str, int]:
        """Images that failed to decode so far and were skipped (counted across DataLoader workers)."""
        return {"train": self.train.skipped.count, "eval": self.eval.skipped.count}


def resolve_source(config: TrainConfig, log=print):
    """A path or `datasets` object that `load_detection_data` understands."""
    name = str(config.data)
    if name in BUILTIN_DATASETS:
        sizes = {k: v for k, v in (("num_train", config.builtin_num_train), ("num_val", config.builtin_num_val)) if v}
        suffix = "".join(f"-{v}" for v in sizes.values())
        root = Path(config.data_cache).expanduser() / f"{name}-{config.image_size}px{suffix}"
        builtin = write_builtin_dataset(name, root, image_size=config.image_size, **sizes)
        log(f"data: built-in {name} in {builtin.root}")
        return builtin.root
    try:
        return open_source(name)  # a path, or the datasets object of a save_to_disk folder / Hub id, loaded once
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--data {name!r}: not a built-in set ({', '.join(BUILTIN_DATASETS)}) and "
                                f"{str(error).removeprefix(f'data source {name!r}: ')}") from None


def load_split(source, split: str, config: TrainConfig, log=print) -> DetectionData:
    try:
        records = load_detection_data(source, split=split, on_error=config.invalid_records)
    except SplitNotFoundError as error:
        raise SplitNotFoundError(f"--data {config.data}: {error}; set train_split / eval_split") from None
    if records.problems:
        log(f"data: {split}: skipped {records.num_skipped} image(s) with problems, e.g. {records.problems[0]}")
    limit = config.max_train_samples if split == config.train_split else config.max_eval_samples
    if limit:
        records.records = records.records[:limit]
    if not len(records):
        raise ValueError(f"--data {config.data}: split {split!r} has no usable images")
    return records


def train_transforms(config: TrainConfig):
    if not config.augment:
        return None
    overrides = {"flip_prob": 0.5 if config.horizontal_flip else 0.0, "crop_prob": 0.5 if config.random_crop else 0.0}
    if config.scales:
        overrides["scales"] = tuple(config.scales)
    if config.max_size:
        overrides["max_size"] = config.max_size
    overrides["color_jitter"] = getattr(config, "color_jitter", 0.0)
    from .user_transforms import with_user_transforms

    return with_user_transforms(detr_train_transforms(AugmentationConfig.for_image_size(config.image_size,
                                                                                          **overrides)),
                                getattr(config, "transforms", None))


def load_data(config: TrainConfig, processor, log=print) -> TrainingData:
    source = resolve_source(config, log)
    train_records = load_split(source, config.train_split, config, log)
    eval_records = load_split(source, config.eval_split, config, log)
    if train_records.categories != eval_records.categories:
        raise ValueError(f"--data {config.data}: {config.train_split} and {config.eval_split} have different "
                         f"categories ({train_records.categories.names} vs {eval_records.categories.names})")
    transforms = train_transforms(config)
    # Without augmentation the processor resizes training images as it does at evaluation.
    train = DetectionDataset(train_records, processor, transforms)
    log(f"data: {len(train_records)} train / {len(eval_records)} eval images ({train_records.layout} layout), "
        f"{len(train_records.categories)} classes: {', '.join(train_records.categories.names)}")
    return TrainingData(train, DetectionDataset(eval_records, processor), eval_records,
                        train_records.id2label, DetectionCollator(processor))


def coco_metric(records: DetectionData, predictions: dict[int, dict]) -> dict:
    """COCO metrics of `predictions` (image_id -> detections) against the records' own annotations."""
    missing = [r.image_id for r in records if r.image_id not in predictions]
    if missing:
        raise ValueError(f"no predictions for {len(missing)} evaluation image(s), e.g. image {missing[0]}")
    return coco_evaluate([predictions[r.image_id] for r in records], [r.target() for r in records], records.id2label)
