"""Detection records in one Arrow table, memory-mapped from a cache file, shared by processes without copying.

A list of Python dicts is touched by every read (reference counts), so each DataLoader worker slowly copies the
pages it reads (copy-on-read after fork) until it holds its own copy of all records. Arrow buffers are plain
memory: reading them writes nothing, and when they are a memory-mapped file every process maps the same pages.
A :class:`RecordTable` builds each :class:`DetectionRecord` on demand from numpy views of those buffers.

Layout: one row per image (``image_id``, ``image`` path, ``width``, ``height``, ``source_row``) and a list column
``annotations`` of structs (``id``, ``bbox`` [x, y, w, h] float64, ``category_id`` label, ``area``, ``iscrowd``,
``polygons`` (a COCO polygon segmentation as lists of float64 coordinates) or ``segmentation_json`` (any other
segmentation, e.g. RLE, as JSON bytes)). ``source_row`` points into a ``datasets`` image column for records
whose pixels live in a ``datasets.Dataset`` (``image`` is then null).
"""
from __future__ import annotations

import json
import os
from array import array
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from .records import DetectionRecord

try:  # faster JSON for the segmentation column; the standard library does the same job
    import orjson

    _dumps, _loads = orjson.dumps, orjson.loads
except ImportError:  # pragma: no cover
    orjson = None
    _dumps, _loads = (lambda obj: json.dumps(obj).encode()), json.loads

__all__ = ["PackedSegmentation", "RecordTable", "SCHEMA", "pack_segmentation", "records_to_table"]

ANNOTATION = pa.struct([
    ("id", pa.int64()), ("bbox", pa.list_(pa.float64(), 4)), ("category_id", pa.int32()), ("area", pa.float64()),
    ("iscrowd", pa.int8()), ("polygons", pa.list_(pa.large_list(pa.float64()))),
    ("segmentation_json", pa.large_binary()),
])
SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("image", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("source_row", pa.int64()), ("annotations", pa.list_(ANNOTATION)),
])


class PackedSegmentation(NamedTuple):
    """A segmentation held compactly while records are checked: polygons as one array of doubles and their
    lengths (a few hundred bytes instead of tens of Python floats), or anything else as JSON bytes."""

    coords: array | None
    lengths: tuple[int, ...]
    json: bytes | None


def pack_segmentation(segmentation: Any) -> PackedSegmentation:
    if type(segmentation) is list:  # COCO polygons: [[x1, y1, x2, y2, ...], ...]
        coords = array("d")
        try:
            for polygon in segmentation:
                coords += array("d", polygon)  # array's list constructor is far faster than extend()
            return PackedSegmentation(coords, tuple(map(len, segmentation)), None)
        except TypeError:  # not lists of numbers: kept as they are, for whoever reads them to judge
            pass
    return PackedSegmentation(None, (), _dumps(segmentation))


def _offsets(lengths: list[int], dtype) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=dtype)
    np.cumsum(lengths, out=offsets[1:])
    return pa.array(offsets)


def _segmentation_arrays(anns: list[dict]) -> tuple[pa.Array, pa.Array]:
    """(polygons, segmentation_json) columns of the annotations."""
    parts, polygon_lengths, counts, has_polygons, other = [], [], [], [], []
    for ann in anns:
        segmentation = ann.get("segmentation")
        if segmentation is not None and not isinstance(segmentation, PackedSegmentation):
            segmentation = pack_segmentation(segmentation)
        polygons = segmentation is not None and segmentation.coords is not None
        if polygons:
            parts.append(segmentation.coords)
            polygon_lengths.extend(segmentation.lengths)
        counts.append(len(segmentation.lengths) if polygons else 0)
        has_polygons.append(polygons)
        other.append(None if segmentation is None or polygons else segmentation.json)
    values = pa.array(np.frombuffer(b"".join(parts), dtype=np.float64))
    inner = pa.LargeListArray.from_arrays(_offsets(polygon_lengths, np.int64), values)
    mask = pa.array(~np.asarray(has_polygons, dtype=bool))
    return pa.ListArray.from_arrays(_offsets(counts, np.int32), inner, mask=mask), pa.array(other, pa.large_binary())


def records_to_table(records: Sequence, source_rows: Sequence[int] | None = None) -> pa.Table:
    """An Arrow table of ``DetectionRecord``s; ``source_rows`` index a ``datasets`` image column instead of paths."""
    anns = [a for r in records for a in r.annotations]
    offsets = np.zeros(len(records) + 1, dtype=np.int32)
    np.cumsum([len(r.annotations) for r in records], out=offsets[1:])
    polygons, segmentation_json = _segmentation_arrays(anns)
    struct = pa.StructArray.from_arrays([
        pa.array([int(a["id"]) for a in anns], pa.int64()),
        pa.FixedSizeListArray.from_arrays(pa.array(np.asarray([a["bbox"] for a in anns], np.float64).reshape(-1)), 4),
        pa.array([a["category_id"] for a in anns], pa.int32()),
        pa.array([float(a["area"]) for a in anns], pa.float64()),
        pa.array([a["iscrowd"] for a in anns], pa.int8()),
        polygons, segmentation_json,
    ], fields=list(ANNOTATION))
    columns = [
        pa.array([r.image_id for r in records], pa.int64()),
        pa.array([None if source_rows is not None else str(r.image) for r in records], pa.string()),
        pa.array([r.width for r in records], pa.int32()),
        pa.array([r.height for r in records], pa.int32()),
        pa.array(source_rows if source_rows is not None else [None] * len(records), pa.int64()),
        pa.ListArray.from_arrays(pa.array(offsets), struct),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def write_table(table: pa.Table, path: Path, metadata: dict) -> None:
    """Write atomically (ranks of a distributed run may build the same cache at once)."""
    table = table.combine_chunks().replace_schema_metadata({"detrkit": json.dumps(metadata)})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(len(table), 1))
    os.replace(partial, path)


def read_table(path: Path) -> tuple[pa.Table, dict]:
    """The table, memory-mapped (no copy, nothing resident until read), and its metadata."""
    with pa.memory_map(str(path), "r") as source:
        table = pa.ipc.open_file(source).read_all()
    return table, json.loads(table.schema.metadata[b"detrkit"])


def _single_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


class RecordTable(Sequence):
    """A read-only sequence of ``DetectionRecord`` over an Arrow table; slicing gives a view, never a copy.

    ``images`` (optional) is a ``datasets`` column of undecoded images that ``source_row`` indexes.
    Pickled (spawned workers, other processes) it carries the cache file's path, not the data, when it has one.
    """

    def __init__(self, table: pa.Table, path: Path | None = None, images=None, rows: np.ndarray | range | None = None):
        self._table, self._path, self._images = table, path, images
        self._rows = range(len(table)) if rows is None else rows
        images_col = _single_chunk(table.column("image"))
        annotations = _single_chunk(table.column("annotations"))
        self._image_ids = _single_chunk(table.column("image_id")).to_numpy()
        self._widths = _single_chunk(table.column("width")).to_numpy()
        self._heights = _single_chunk(table.column("height")).to_numpy()
        self._source_rows = _single_chunk(table.column("source_row"))
        self._paths = images_col
        self._offsets = annotations.offsets.to_numpy()
        fields = annotations.values
        self._ann_id = fields.field("id").to_numpy()
        self._bbox = fields.field("bbox").values.to_numpy().reshape(-1, 4)
        self._category = fields.field("category_id").to_numpy()
        self._area = fields.field("area").to_numpy()
        self._iscrowd = fields.field("iscrowd").to_numpy()
        polygons = fields.field("polygons")
        self._has_polygons = polygons.is_valid().to_numpy(zero_copy_only=False)
        self._polygon_offsets = polygons.offsets.to_numpy()
        self._coord_offsets = polygons.values.offsets.to_numpy()
        self._coords = polygons.values.values.to_numpy()
        self._segmentation_json = fields.field("segmentation_json")

    @property
    def table(self) -> pa.Table:
        return self._table

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return RecordTable(self._table, self._path, self._images, self._rows[index])
        return self.record(self._rows[index])

    def __iter__(self) -> Iterator:
        return (self.record(row) for row in self._rows)

    def get(self, index: int, segmentation: bool = True):
        """Record ``index`` of this view; ``segmentation=False`` skips decoding polygons nobody will read."""
        return self.record(self._rows[index], segmentation)

    def image_ref(self, row: int) -> Any:
        path = self._paths[row].as_py()
        return path if path is not None else self._images[int(self._source_rows[row].as_py())]

    def record(self, row: int, segmentation: bool = True):
        """Record ``row`` of the table (not of this view), built now from the Arrow buffers."""
        image_id = int(self._image_ids[row])
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        annotations = []
        for j in range(start, end):
            ann = {"id": int(self._ann_id[j]), "image_id": image_id, "bbox": self._bbox[j].tolist(),
                   "category_id": int(self._category[j]), "area": float(self._area[j]),
                   "iscrowd": int(self._iscrowd[j])}
            if segmentation:
                value = self._segmentation(j)
                if value is not None:
                    ann["segmentation"] = value
            annotations.append(ann)
        return DetectionRecord(image_id, self.image_ref(row), int(self._widths[row]), int(self._heights[row]),
                               annotations)

    def _segmentation(self, j: int):
        if self._has_polygons[j]:
            first, last = self._polygon_offsets[j], self._polygon_offsets[j + 1]
            return [self._coords[self._coord_offsets[k]:self._coord_offsets[k + 1]].tolist() for k in range(first, last)]
        raw = self._segmentation_json[j].as_py()
        return None if raw is None else _loads(raw)

    def __getstate__(self):
        rows = self._rows
        if self._path is not None:
            return {"path": str(self._path), "images": self._images, "rows": rows}
        return {"table": self._table, "images": self._images, "rows": rows}

    def __setstate__(self, state):
        path = state.get("path")
        table = read_table(Path(path))[0] if path is not None else state["table"]
        self.__init__(table, Path(path) if path else None, state["images"], state["rows"])
