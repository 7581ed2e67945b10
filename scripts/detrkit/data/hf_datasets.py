"""The ``datasets`` layout: a Dataset with an ``objects`` column, as the cppe-5 Hub set (:func:`load_hf_dataset`).

Columns ``image``, ``image_id``, ``width``, ``height``, ``objects: {id, area, bbox, category}`` with names from the
ClassLabel. The pixels stay in the dataset's own (memory-mapped) table; the records point at their rows.
"""
from __future__ import annotations

from .images import DatasetImages, DatasetRow, check_mode
from .objects_column import check_object_rows
from .problems import InvalidDatasetError, Problem
from .record_table import RecordTable, records_to_table
from .records import DetectionData
from .validation import OnError, check_on_error, finish

__all__ = ["load_hf_dataset"]


def _class_label_names(features) -> list[str] | None:
    """Names of the ClassLabel under ``objects.category`` (any nesting ``datasets`` uses), if there is one."""
    objects = features.get("objects") if features is not None else None
    while objects is not None and not isinstance(objects, dict):
        objects = getattr(objects, "feature", None)  # List/Sequence of a struct
    if objects is None:
        return None
    feature = objects.get("category", objects.get("categories"))
    while feature is not None and not hasattr(feature, "names"):
        feature = getattr(feature, "feature", None)
    return list(feature.names) if feature is not None else None


def load_hf_dataset(dataset, class_names: list[str] | None = None, bbox_format: str = "xywh",
                    on_error: OnError = "raise", check_images: bool | str = "header", cache_dir=None) -> DetectionData:
    """Load a ``datasets.Dataset`` in the cppe-5 layout (``image``, ``image_id``, ``width``, ``height``,
    ``objects: {id, area, bbox, category}``). Class names come from the ClassLabel of ``objects.category``,
    else from ``class_names``, else from the category values themselves. The pixels stay in the dataset's own
    (memory-mapped) table; the records point at their rows. ``cache_dir`` is unused: ``datasets`` caches."""
    import datasets

    check_on_error(on_error)
    check = check_mode(check_images)
    missing = [c for c in ("image", "objects") if c not in dataset.column_names]
    if missing:
        raise InvalidDatasetError("datasets.Dataset", [Problem("-", f"missing column(s) {missing}; expected "
                                                                     f"'image' and 'objects'")], len(dataset))
    class_names = class_names or _class_label_names(dataset.features)
    if isinstance(dataset.features["image"], datasets.Image):
        # Keep the encoded bytes, not decoded pixels: records stay small and a broken image is reported here.
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    meta = dataset.select_columns([c for c in ("image_id", "width", "height", "objects") if c in dataset.column_names])
    images = DatasetImages(dataset.select_columns(["image"]))

    def rows():
        for index, row in enumerate(meta):
            yield (row.get("image_id", index), DatasetRow(images, index), row.get("width"), row.get("height"),
                   row["objects"])

    checked = check_object_rows(rows(), class_names, bbox_format, "datasets.Dataset", check, len(dataset), [],
                                   "datasets")
    table = records_to_table(checked.records, source_rows=[record.image.row for record in checked.records])
    return finish(checked, on_error, RecordTable(table, images=images))
