"""`--data` -> validated train / eval records, encoded datasets and the collator.

`--data` is a built-in set name ("shapes-a", "shapes-b": generated into `data_cache` on first use), or anything
detrkit.data's `load_detection_data` reads: a COCO folder or json, a YOLO folder with data.yaml, a Pascal
VOC folder, an imagefolder with metadata.jsonl, a `datasets` folder written by `save_to_disk`, or a Hub dataset
id (`owner/name` or `name`) with an `objects` column. Split names are found by themselves (`val` also finds
`valid`, `validation`, `val2017`). Every bad record is reported with its image id and skipped or fatal as
`invalid_records` says; images that fail to decode later, in a DataLoader worker, are skipped and counted in
`TrainingData.skipped_images()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from detrkit.data.augmentations import AugmentationConfig, detr_train_transforms
from detrkit.data.collator import DetectionCollator
from detrkit.data.dataset import DetectionDataset
from detrkit.data.records import DetectionData
from detrkit.data.sources import read_split, resolve_data_source

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
    """The config's `--data` as a path or `datasets` object that `load_detection_data` understands."""
    return resolve_data_source(config.data, config.data_cache, config.image_size, config.builtin_num_train,
                               config.builtin_num_val, log)


def load_split(source, split: str, config: TrainConfig, log=print) -> DetectionData:
    """One split's records, limited by the config's max_train_samples / max_eval_samples."""
    limit = config.max_train_samples if split == config.train_split else config.max_eval_samples
    return read_split(source, split, config.data, config.invalid_records, limit,
                      "; set train_split / eval_split", log)


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
