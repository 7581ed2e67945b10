"""`--data` as every command reads it: a built-in set name ("shapes-a", "shapes-b": generated into `data_cache` on
first use) or anything `load_detection_data` reads, and one split's validated records."""
from __future__ import annotations

from pathlib import Path

from .builtin.shapes import BUILTIN_DATASETS, write_builtin_dataset
from .layouts import SplitNotFoundError, load_detection_data, open_source
from .records import DetectionData


def resolve_data_source(data, data_cache, image_size: int, num_train: int | None = None,
                        num_val: int | None = None, log=print):
    """A path or `datasets` object that `load_detection_data` understands; built-in sets are written first
    (`image_size` pixels, `num_train` / `num_val` images when given)."""
    name = str(data)
    if name in BUILTIN_DATASETS:
        sizes = {k: v for k, v in (("num_train", num_train), ("num_val", num_val)) if v}
        suffix = "".join(f"-{v}" for v in sizes.values())
        root = Path(data_cache).expanduser() / f"{name}-{image_size}px{suffix}"
        builtin = write_builtin_dataset(name, root, image_size=image_size, **sizes)
        log(f"data: built-in {name} in {builtin.root}")
        return builtin.root
    try:
        return open_source(name)  # a path, or the datasets object of a save_to_disk folder / Hub id, loaded once
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--data {name!r}: not a built-in set ({', '.join(BUILTIN_DATASETS)}) and "
                                f"{str(error).removeprefix(f'data source {name!r}: ')}") from None


def read_split(source, split: str, data_name, invalid_records: str = "skip", limit: int | None = None,
               split_hint: str = "", log=print) -> DetectionData:
    """The validated records of `split` (the first `limit` of them); `split_hint` ends a missing split's error."""
    try:
        records = load_detection_data(source, split=split, on_error=invalid_records)
    except SplitNotFoundError as error:
        raise SplitNotFoundError(f"--data {data_name}: {error}{split_hint}") from None
    if records.problems:
        log(f"data: {split}: skipped {records.num_skipped} image(s) with problems, e.g. {records.problems[0]}")
    if records.boxes:  # the counts `detrkit data check` prints (the dropped boxes are named in the log)
        for line in records.boxes.lines(shown=0):
            log(f"data: {split}: {line}")
    if limit:
        records.records = records.records[:limit]
    if not len(records):
        raise ValueError(f"--data {data_name}: split {split!r} has no usable images")
    return records
