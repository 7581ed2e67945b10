"""Detection data sets in one common form, checked record by record.

Loaders turn each layout into a :class:`DetectionData` (records + categories + the problems found):

* a COCO instances file and its image folder (:func:`load_coco`);
* a ``datasets`` Dataset with an ``objects`` column, the cppe-5 Hub layout: ``image``, ``image_id``, ``width``,
  ``height``, ``objects: {id, area, bbox, category}`` with names from the ClassLabel (:func:`load_hf_dataset`);
* an imagefolder with ``metadata.jsonl`` lines ``{"file_name": ..., "objects": {"bbox": [...], "category": [...]}}``
  (:func:`load_imagefolder`);
* YOLO and Pascal VOC folders (``yolo.py``, ``voc.py``); :func:`load_detection_data` finds the layout and the
  split by itself (``data_layouts.py``).

Every record becomes a :class:`DetectionRecord` whose annotations are COCO-style dicts (``bbox`` = absolute
[x, y, w, h]) with ``category_id`` already mapped to a contiguous label id 0..N-1: COCO category ids may be
sparse, the model's class head is not. :class:`Categories` keeps the data's own ids and names.

Validation looks at every record before anything is dropped (missing file, unreadable image header, size
mismatch, missing field, box outside the image / negative size / NaN, unknown category, duplicate id) and then
either raises one error listing all problems (``on_error="raise"``) or skips the bad images, counting and
logging each with its reason (``on_error="skip"``). An image with a bad box is skipped as a whole: keeping it
without that box would teach the model to call a real object background. Images are checked by their header
only (``check_images="header"``): decoding every image up front costs minutes at COCO size, and a file that is
truncated past its header is reported and skipped when the data loader reads it (see ``detection_dataset.py``).

The validated records are stored in an Arrow table (``record_table.py``) cached on disk, keyed by the annotation
files' paths, sizes and modification times: a second load maps the cache instead of parsing and checking again.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

from PIL import Image, ImageOps, UnidentifiedImageError

from .json_stream import load_json_transformed
from .record_table import PackedSegmentation, RecordTable, pack_segmentation, read_table, records_to_table, write_table

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

try:  # faster than the json module on small files (a COCO file is read by json_stream.py)
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

__all__ = [
    "Categories", "DetectionData", "DetectionRecord", "InvalidDatasetError", "Problem",
    "load_coco", "load_detection_data", "load_hf_dataset", "load_imagefolder", "open_image", "read_json",
    "records_cache_dir",
]

logger = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]
CheckImages = Literal["header", "decode", "none"]
# Boxes may overshoot the image by rounding; within this many pixels they are clipped, beyond it reported.
BOX_TOLERANCE = 1.0
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Categories:
    """Class names of a data set, indexed by contiguous label id, with the original (COCO) id of each."""

    names: tuple[str, ...]
    original_ids: tuple[int, ...]

    def __post_init__(self):
        if len(self.names) != len(self.original_ids):
            raise ValueError("Categories needs one original id per name")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate category names: {sorted(n for n in self.names if self.names.count(n) > 1)}")

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "Categories":
        names = tuple(names)
        return cls(names, tuple(range(len(names))))

    @classmethod
    def from_coco(cls, categories: list[dict]) -> "Categories":
        """From a COCO ``categories`` list; labels follow the order of the COCO ids."""
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(str(c["name"]) for c in ordered), tuple(int(c["id"]) for c in ordered))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def to_original_id(self, label: int) -> int:
        """Contiguous label -> the data set's own category id (to write results against the original json)."""
        return self.original_ids[label]

    def to_coco(self) -> list[dict]:
        """COCO ``categories`` in label space (id = contiguous label), as the metric uses them."""
        return [{"id": i, "name": name} for i, name in enumerate(self.names)]

    def to_original_coco(self) -> list[dict]:
        """COCO ``categories`` with the data's own ids (to write results or files the source's tools read)."""
        return [{"id": i, "name": name} for i, name in zip(self.original_ids, self.names)]

    @property
    def original_id2label(self) -> dict[int, int]:
        """The data's own category id -> contiguous label."""
        return {original: label for label, original in enumerate(self.original_ids)}


@dataclass
class DetectionRecord:
    """One image: a reference to its pixels plus COCO-style annotations in label space.

    ``image`` is a path, a PIL image, or a ``{"bytes", "path"}`` dict as ``datasets`` stores images.
    Each annotation has ``bbox`` [x, y, w, h] (absolute pixels), ``category_id`` (contiguous label id),
    ``area``, ``iscrowd`` and ``id``; a ``segmentation`` is kept when the source has one.
    """

    image_id: int
    image: Any
    width: int
    height: int
    annotations: list[dict] = field(default_factory=list)

    def target(self) -> dict:
        """The annotation dict image processors take: ``{"image_id", "annotations"}``."""
        return {"image_id": self.image_id, "annotations": self.annotations}


@dataclass(frozen=True)
class Problem:
    image_id: Any
    message: str

    def __str__(self) -> str:
        return self.message if self.image_id == "-" else f"image {self.image_id}: {self.message}"  # "-": the file


class InvalidDatasetError(ValueError):
    """Raised with ``on_error="raise"``; ``problems`` lists every bad record found, not just the first."""

    def __init__(self, source: str, problems: list[Problem], num_entries: int):
        self.source, self.problems, self.num_entries = source, problems, num_entries
        shown = "\n".join(f"  - {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(
            f"{len(problems)} problem(s) in {source} ({num_entries} images):\n{shown}{more}\n"
            f"Fix the data, or pass on_error='skip' to leave these images out."
        )

    def __reduce__(self):  # pickled whole (from the process that builds the cache), not by its message
        return type(self), (self.source, self.problems, self.num_entries)


@dataclass
class DetectionData:
    """Validated records of one split, their categories, and the problems that made records be skipped."""

    records: Sequence[DetectionRecord]  # a RecordTable (Arrow-backed, shared between processes) or a list
    categories: Categories
    problems: list[Problem] = field(default_factory=list)
    source: str = ""
    num_skipped: int = 0  # images of the source left out because of the problems
    layout: str = ""  # "coco", "yolo", "voc", "imagefolder", "datasets"
    cache_file: Path | None = None  # the Arrow cache the records are mapped from, if any

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> DetectionRecord:
        return self.records[index]

    @property
    def id2label(self) -> dict[int, str]:
        return self.categories.id2label

    @property
    def label2id(self) -> dict[str, int]:
        return self.categories.label2id


# --- images ----------------------------------------------------------------------------------------------------

def _open(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, DatasetRow):
        image = image.load()
    if isinstance(image, dict):  # datasets' undecoded Image: bytes, or a path when the bytes are not stored
        return Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") is not None else Image.open(image["path"])
    return Image.open(image)


def _orientation(img: Image.Image) -> int:
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # Pillow's PNG getexif() decodes all pixels to look for an eXIf chunk after them
    return img.getexif().get(EXIF_ORIENTATION, 1)


def open_image(image: Any) -> Image.Image:
    """Decode an image reference (path, PIL image, or ``datasets`` ``{"bytes", "path"}`` dict) to upright RGB.

    EXIF orientation is applied, as ``datasets`` and the image processor do, so sizes and boxes refer to the
    image as viewers show it (a file annotated in raw orientation shows up as a size mismatch in validation)."""
    img = _open(image)
    img.load()
    if _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)  # also drops the tag, so nothing downstream turns it again
    return img.convert("RGB") if img.mode != "RGB" else img


def check_mode(check_images: bool | str) -> CheckImages:
    """``True`` (decode every image, as before) / ``False`` (trust the declared sizes) or a mode by name."""
    mode = {True: "decode", False: "none"}.get(check_images, check_images) if isinstance(check_images, bool) \
        else check_images
    if mode not in ("header", "decode", "none"):
        raise ValueError(f"check_images must be 'header', 'decode' or 'none', got {check_images!r}")
    return mode


def image_size(image: Any, check: CheckImages = "header") -> tuple[int, int] | str:
    """(width, height) of an image as viewers show it, or the reason it cannot be read. ``"header"`` reads only
    the header (fast); ``"decode"`` reads all pixels, so that a truncated file fails now, with its record."""
    if isinstance(image, (str, Path)) and not os.path.isfile(image):
        return f"image file not found: {image}"
    try:
        if isinstance(image, Image.Image):
            width, height, orientation = *image.size, _orientation(image)
        else:
            with _open(image) as img:
                if check == "decode":
                    img.load()
                width, height, orientation = *img.size, _orientation(img)
        return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, KeyError, TypeError) as err:
        return f"cannot decode image ({type(err).__name__}: {err})"


# --- validation --------------------------------------------------------------------------------------------------

def _check_box(bbox: Any, width: int, height: int) -> list[float] | str:
    """A clean [x, y, w, h] inside the image, or what is wrong with ``bbox``."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return f"bbox {bbox!r} is not 4 numbers [x, y, w, h]"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"bbox {[x, y, w, h]} has NaN or infinite values"
    if w <= 0 or h <= 0:
        return f"bbox {[x, y, w, h]} has negative or zero size"
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
        return f"bbox {[x, y, w, h]} (x, y, w, h) lies outside the {width}x{height} image"
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    return [x0, y0, x1 - x0, y1 - y0]


def _annotation(obj: dict, k: int, image_id: int, box: list[float], label: int) -> dict:
    ann = {"id": obj.get("id", k), "image_id": image_id, "bbox": box, "category_id": label,
           "area": float(obj["area"]) if obj.get("area") is not None else box[2] * box[3],
           "iscrowd": int(obj.get("iscrowd") or 0)}
    if obj.get("segmentation") is not None:
        segmentation = obj["segmentation"]  # compact from here on, until the table
        ann["segmentation"] = segmentation if isinstance(segmentation, PackedSegmentation) else \
            pack_segmentation(segmentation)
    return ann


def _check_record(image_id, image, width, height, objects: list[dict], category_of: dict, check: CheckImages,
                  category_key: str):
    """Validate one raw record. ``objects`` carry ``bbox`` [x, y, w, h] and under ``category_key`` a class name or
    original id, looked up in ``category_of``. Returns (DetectionRecord or None, list of problem messages)."""
    problems = []
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        return None, [f"image id {image_id!r} is not an integer"]
    size = image_size(image, check) if check != "none" else None
    if isinstance(size, str):
        problems.append(size)
    elif size is not None:
        if width is not None and height is not None and (int(width), int(height)) != size:
            problems.append(f"declared size {width}x{height} differs from the image's {size[0]}x{size[1]}")
        width, height = size
    elif width is None or height is None:
        problems.append("no width/height given and images are not checked (check_images='none')")
    annotations = []
    for k, obj in enumerate(objects):
        name = f"annotation {obj.get('id', k)}"
        missing = [key for key in ("bbox", category_key) if obj.get(key) is None]
        if missing:
            problems.append(f"{name}: missing field(s) {missing}")
            continue
        category = obj[category_key]
        label = category_of.get(category) if isinstance(category, (str, int)) else None
        if label is None:
            problems.append(f"{name}: unknown category {category!r}")
        box = _check_box(obj["bbox"], width, height) if width is not None and height is not None else None
        if isinstance(box, str):
            problems.append(f"{name}: {box}")
        if label is None or not isinstance(box, list):
            continue
        annotations.append(_annotation(obj, k, image_id, box, label))
    if problems:
        return None, problems
    return DetectionRecord(image_id, image, int(width), int(height), annotations), []


@dataclass
class CheckedRecords:
    """What validation found, before ``on_error`` decides: the good records and every problem."""

    records: Sequence[DetectionRecord]
    categories: Categories
    problems: list[Problem]
    num_entries: int
    source: str
    layout: str = ""


def check_records(raw: Iterable[tuple], categories: Categories, category_of: dict, source: str,
                  check: CheckImages, num_entries: int, early: Iterable[Problem] = (), category_key: str = "category",
                  layout: str = "") -> CheckedRecords:
    """Check every raw record (image_id, image, width, height, objects). ``early`` holds problems the loader
    found while reading its ``num_entries`` image entries."""
    records, problems, seen = [], list(early), set()
    for image_id, image, width, height, objects in raw:
        if image_id in seen:
            problems.append(Problem(image_id, "duplicate image id"))
            continue
        seen.add(image_id)
        record, messages = _check_record(image_id, image, width, height, objects, category_of, check, category_key)
        problems.extend(Problem(image_id, m) for m in messages)
        if record is not None:
            records.append(record)
    return CheckedRecords(records, categories, problems, num_entries, source, layout)


def _check_on_error(on_error: str) -> None:
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")


def finish(checked: CheckedRecords, on_error: OnError, records: Sequence[DetectionRecord] | None = None,
           cache_file: Path | None = None) -> DetectionData:
    """Raise with every problem (``on_error="raise"``) or log them and keep the good records."""
    problems, num_entries = checked.problems, checked.num_entries
    if problems and on_error == "raise":
        raise InvalidDatasetError(checked.source, problems, num_entries)
    records = checked.records if records is None else records
    data = DetectionData(records, checked.categories, problems, checked.source,
                         num_skipped=num_entries - len(records), layout=checked.layout, cache_file=cache_file)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... {len(problems) - 20} more in DetectionData.problems" if len(problems) > 20 else ""
        logger.warning("%s: left out %d of %d images (%d problems):\n%s%s",
                       checked.source, data.num_skipped, num_entries, len(problems), lines, more)
    return data


# --- the on-disk cache -------------------------------------------------------------------------------------------

CACHE_VERSION = 2
FORK_BUILD_BYTES = 32 * 2 ** 20  # annotation files this large are parsed in a child process (see load_cached)
MAX_CACHE_FILES = 64  # the oldest are removed beyond this many: every temporary test folder makes a new key


def records_cache_dir(cache_dir: str | Path | None | bool = None) -> Path | None:
    """Where validated records are cached: ``cache_dir``, else ``$DETRKIT_CACHE/records``, else
    ``~/.cache/detrkit/records``; ``False`` turns the cache off."""
    if cache_dir is False:
        return None
    if cache_dir is not None and cache_dir is not True:
        return Path(cache_dir)
    root = os.environ.get("DETRKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "detrkit"
    return Path(root) / "records"


HASHED_FILE_BYTES = 16 * 2 ** 20  # smaller files are keyed by their content too


def _file_key(path: Path) -> list:
    stat = path.stat()
    key = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    if path.is_file() and stat.st_size <= HASHED_FILE_BYTES:
        # file times tick coarsely (milliseconds): an edit of the same size right after a load keeps its mtime
        key.append(hashlib.sha256(path.read_bytes()).hexdigest())
    return key


def cache_path(directory: Path, kind: str, files: Iterable[Path], options: dict) -> Path:
    """The cache file for ``files`` as they are now: any change of path, size or mtime makes a new key."""
    key = json.dumps({"version": CACHE_VERSION, "kind": kind, "files": [_file_key(f) for f in files],
                      "options": options}, sort_keys=True, default=str)
    return directory / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.arrow"


def listing_digest(paths: Iterable[str]) -> str:
    """One digest over many files' names, sizes and mtimes (label files of YOLO or VOC): an edited, added or
    removed file makes a new cache key."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another process
        return 0.0


def _evict(directory: Path) -> None:
    files = sorted(directory.glob("*.arrow"), key=_mtime)
    for old in files[:-MAX_CACHE_FILES]:
        for path in (old, old.with_name(old.name + ".lock")):
            try:
                path.unlink()
            except OSError:
                pass


def _from_cache(path: Path) -> tuple[RecordTable, CheckedRecords] | None:
    try:
        table, meta = read_table(path)
    except Exception as err:  # a torn or foreign file: rebuild it
        logger.warning("ignoring the unreadable records cache %s (%s)", path, err)
        return None
    categories = Categories(tuple(meta["names"]), tuple(meta["original_ids"]))
    problems = [Problem(image_id, message) for image_id, message in meta["problems"]]
    records = RecordTable(table, path)
    return records, CheckedRecords(records, categories, problems, meta["num_entries"], meta["source"],
                                   meta["layout"])


def _metadata(checked: CheckedRecords) -> dict:
    return {"names": list(checked.categories.names), "original_ids": list(checked.categories.original_ids),
            "problems": [[p.image_id, p.message] for p in checked.problems], "num_entries": checked.num_entries,
            "source": checked.source, "layout": checked.layout}


def _build_into(build: Callable[[], CheckedRecords], path: Path) -> None:
    checked = build()
    write_table(records_to_table(checked.records), path, _metadata(checked))


def _child_build(build: Callable[[], CheckedRecords], path: Path, send) -> None:
    try:
        _build_into(build, path)
        send.send(None)
    except BaseException as err:  # sent back whole: the parent raises it as if it had built the cache itself
        try:
            send.send(err)
        except Exception:  # an exception that does not pickle: its text still says what went wrong
            send.send(RuntimeError(f"{type(err).__name__}: {err}"))


@contextlib.contextmanager
def _exclusive(lock_file: Path):
    """One builder per cache file: the ranks of a distributed run would otherwise each parse the same json."""
    if fcntl is None:  # not POSIX: each process builds; the atomic rename keeps the file whole
        yield
        return
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def _build_in_child(build: Callable[[], CheckedRecords], path: Path) -> None:
    """Build the cache in a forked child. Parsing a COCO-size json takes gigabytes of small Python objects that
    the allocator keeps after they are freed; in a child they end with it, and this process only maps the cache."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_build, args=(build, path, send), name="detrkit-records-cache")
    child.start()
    send.close()
    try:
        error = receive.recv()
    except EOFError:  # the child died without a word (killed, out of memory)
        error = RuntimeError(f"building the records cache {path} failed in a child process "
                             f"(exit code {child.join() or child.exitcode})")
    child.join()
    if error is not None:
        raise error


def load_cached(kind: str, files: Sequence[Path], options: dict, build: Callable[[], CheckedRecords],
                on_error: OnError, cache_dir=None) -> DetectionData:
    """Validated records of ``files`` from the cache, or built by ``build`` and cached, then memory-mapped.
    Sources of ``FORK_BUILD_BYTES`` or more are built in a forked child process (see :func:`_build_in_child`)."""
    _check_on_error(on_error)
    directory = records_cache_dir(cache_dir)
    path = cache_path(directory, kind, files, options) if directory is not None else None
    if path is not None and not path.is_file() and not _writable(directory):
        logger.warning("cannot write the records cache in %s; keeping the records in memory (set DETRKIT_CACHE)",
                       directory)
        path = None
    if path is not None and not path.is_file():
        with _exclusive(path.with_name(path.name + ".lock")):
            if not path.is_file():  # else another process (a rank of the same run) built it while we waited
                if _can_fork() and sum(f.stat().st_size for f in files if f.is_file()) >= FORK_BUILD_BYTES:
                    _build_in_child(build, path)
                else:
                    _build_into(build, path)
                _evict(directory)
    cached = _from_cache(path) if path is not None else None
    if cached is not None:
        os.utime(path)  # recently used: kept by the eviction
        return finish(cached[1], on_error, cached[0], path)
    checked = build()  # no cache (turned off, not writable or unreadable): in memory
    checked.records = RecordTable(records_to_table(checked.records))
    return finish(checked, on_error, checked.records)


# --- loaders -----------------------------------------------------------------------------------------------------

def read_json(path: Path, transforms: dict[str, Callable[[Any], Any]] | None = None) -> Any:
    """Parse a JSON file, with the elements of the top-level arrays named in ``transforms`` passed through its
    functions as they are decoded (see ``json_stream.py``); a file that is not valid JSON raises
    ``InvalidDatasetError`` naming it."""
    try:
        if transforms:
            return load_json_transformed(path, transforms)
        raw = path.read_bytes()
        if orjson is not None:
            try:
                return orjson.loads(raw)
            except ValueError:
                pass  # e.g. NaN, which Python's json writes and reads: the box check then names it
        return json.loads(raw)
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidDatasetError(str(path), [Problem("-", f"cannot read the annotation file ({err})")], 0) from err


def _packed(annotation: Any) -> Any:
    """An annotation with its polygons packed (applied while the json is decoded: at COCO size the parsed polygons
    would add up to gigabytes of Python floats)."""
    if isinstance(annotation, dict) and annotation.get("segmentation") is not None:
        annotation["segmentation"] = pack_segmentation(annotation["segmentation"])
    return annotation


def _coco_categories(coco: dict, source: str) -> Categories:
    bad = [c for c in coco["categories"] if not isinstance(c, dict) or not isinstance(c.get("id"), int)
           or c.get("name") is None]
    if bad:
        raise InvalidDatasetError(source, [Problem("-", f"category entry {bad[0]!r} needs an integer 'id' and a "
                                                        f"'name'")], 0)
    ids = [c["id"] for c in coco["categories"]]
    if len(set(ids)) != len(ids):
        raise InvalidDatasetError(source, [Problem("-", f"duplicate category ids {sorted({i for i in ids if ids.count(i) > 1})}")], 0)
    try:
        return Categories.from_coco(coco["categories"])
    except ValueError as err:
        raise InvalidDatasetError(source, [Problem("-", str(err))], 0) from None


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _check_coco(annotation_file: Path, image_dir: Path, check: CheckImages) -> CheckedRecords:
    source = str(annotation_file)
    coco = read_json(annotation_file, {"annotations": _packed})
    if not isinstance(coco, dict):
        raise InvalidDatasetError(source, [Problem("-", "the file is not a COCO json object")], 0)
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise InvalidDatasetError(source, [Problem("-", f"the file has no '{key}' list")], 0)
    categories = _coco_categories(coco, source)
    category_of = categories.original_id2label

    early, by_image = [], {}
    images = coco.pop("images")
    image_ids = {img.get("id") for img in images if isinstance(img, dict) and _is_id(img.get("id"))}
    for ann in coco.pop("annotations"):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not _is_id(image_id) or image_id not in image_ids:
            what = f"annotation {ann.get('id')}" if isinstance(ann, dict) else f"annotation entry {ann!r}"
            early.append(Problem(image_id if _is_id(image_id) else "-",
                                 f"{what} refers to an image id missing from 'images' ({image_id!r})"))
            continue
        by_image.setdefault(image_id, []).append(ann)
    folder = str(image_dir)

    def raw():
        for index, img in enumerate(images):
            if not isinstance(img, dict) or not _is_id(img.get("id")) or not isinstance(img.get("file_name"), str):
                image_id = img.get("id") if isinstance(img, dict) and _is_id(img.get("id")) else f"#{index}"
                early.append(Problem(image_id, "image entry lacks an 'id' or a 'file_name'"))
                continue
            # popped as checked, so the parsed annotations are freed as the records are built
            yield (img["id"], os.path.join(folder, img["file_name"]), img.get("width"), img.get("height"),
                   by_image.pop(img["id"], []))

    checked = check_records(raw(), categories, category_of, source, check, len(images), (), "category_id", "coco")
    checked.problems[:0] = early  # the entry problems first, as the file lists them
    return checked


def load_coco(annotation_file: str | Path, image_dir: str | Path | None = None, on_error: OnError = "raise",
              check_images: bool | str = "header", cache_dir=None) -> DetectionData:
    """Load a COCO instances file; ``image_dir`` defaults to the folder of the json file.

    Category ids may be sparse; labels are assigned in the order of the ids (see :class:`Categories`).
    ``cache_dir`` as in :func:`records_cache_dir`.
    """
    annotation_file = Path(annotation_file)
    image_dir = Path(image_dir) if image_dir is not None else annotation_file.parent
    check = check_mode(check_images)
    if not annotation_file.is_file():
        raise InvalidDatasetError(str(annotation_file), [Problem("-", "annotation file not found")], 0)
    if not image_dir.is_dir():
        raise InvalidDatasetError(str(annotation_file), [Problem("-", f"image folder not found: {image_dir}")], 0)
    options = {"image_dir": str(image_dir.resolve()), "check": check}
    return load_cached("coco", [annotation_file], options, lambda: _check_coco(annotation_file, image_dir, check),
                       on_error, cache_dir)


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


def _objects_to_list(objects: Any) -> list[dict] | str:
    """``objects`` as a list of per-object dicts, from a dict of columns or a list of structs."""
    if objects is None:
        return []
    if isinstance(objects, list):
        return [dict(o) for o in objects]
    if not isinstance(objects, dict) or "bbox" not in objects:
        return "field 'objects' must be a dict with 'bbox' and 'category' lists"
    objects = dict(objects)
    if "category" not in objects and "categories" in objects:
        objects["category"] = objects.pop("categories")
    columns = {k: list(v) for k, v in objects.items() if v is not None}
    n = len(columns["bbox"])
    bad = [k for k, v in columns.items() if len(v) != n]
    if bad:
        return f"objects columns {bad} do not have one entry per bbox ({n})"
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def _box_converter(bbox_format: str):
    if bbox_format == "xywh":
        return lambda b: b
    if bbox_format == "xyxy":
        return lambda b: [b[0], b[1], b[2] - b[0], b[3] - b[1]] if b is not None and len(b) == 4 else b
    raise ValueError(f"bbox_format must be 'xywh' (COCO) or 'xyxy', got {bbox_format!r}")


def _categories_from_values(values: list, class_names: list[str] | None):
    """Categories + lookup when the data carries raw names or ids rather than a ClassLabel."""
    if class_names is not None:
        categories = Categories.from_names(class_names)
        lookup = {**{name: i for i, name in enumerate(class_names)}, **{i: i for i in range(len(class_names))}}
        return categories, lookup
    if all(isinstance(v, str) for v in values):
        names = sorted(set(values))
        return Categories.from_names(names), {name: i for i, name in enumerate(names)}
    ids = sorted({v for v in values if isinstance(v, int) and not isinstance(v, bool)})
    return Categories(tuple(str(i) for i in ids), tuple(ids)), {v: i for i, v in enumerate(ids)}


def _check_objects_table(rows: Iterable[tuple], class_names: list[str] | None, bbox_format: str, source: str,
                         check: CheckImages, num_entries: int, early: list[Problem], layout: str) -> CheckedRecords:
    """Shared by the ``datasets`` and imagefolder loaders: rows of (image_id, image, width, height, objects)."""
    to_xywh = _box_converter(bbox_format)
    parsed = []
    for image_id, image, width, height, objects in rows:
        objs = _objects_to_list(objects)
        if isinstance(objs, str):
            early.append(Problem(image_id, objs))
            continue
        parsed.append((image_id, image, width, height, [{**o, "bbox": to_xywh(o.get("bbox"))} for o in objs]))
    values = [o.get("category") for row in parsed for o in row[4] if o.get("category") is not None]
    categories, lookup = _categories_from_values(values, class_names)
    return check_records(parsed, categories, lookup, source, check, num_entries, early, layout=layout)


class DatasetImages:
    """The undecoded ``image`` column of a ``datasets.Dataset``, read one row at a time (never all at once)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, row: int):
        return self.dataset[int(row)]["image"]


@dataclass(frozen=True)
class DatasetRow:
    """An image in row ``row`` of a ``datasets`` image column, while records are checked."""

    images: DatasetImages
    row: int

    def load(self):
        return self.images[self.row]


def load_hf_dataset(dataset, class_names: list[str] | None = None, bbox_format: str = "xywh",
                    on_error: OnError = "raise", check_images: bool | str = "header", cache_dir=None) -> DetectionData:
    """Load a ``datasets.Dataset`` in the cppe-5 layout (``image``, ``image_id``, ``width``, ``height``,
    ``objects: {id, area, bbox, category}``). Class names come from the ClassLabel of ``objects.category``,
    else from ``class_names``, else from the category values themselves. The pixels stay in the dataset's own
    (memory-mapped) table; the records point at their rows. ``cache_dir`` is unused: ``datasets`` caches."""
    import datasets

    _check_on_error(on_error)
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

    checked = _check_objects_table(rows(), class_names, bbox_format, "datasets.Dataset", check, len(dataset), [],
                                   "datasets")
    table = records_to_table(checked.records, source_rows=[record.image.row for record in checked.records])
    return finish(checked, on_error, RecordTable(table, images=images))


def _check_imagefolder(folder: Path, class_names, bbox_format: str, check: CheckImages) -> CheckedRecords:
    early, rows = [], []
    metadata = folder / "metadata.jsonl"
    for line_no, line in enumerate(metadata.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)
        except json.JSONDecodeError as err:
            early.append(Problem(f"line {line_no}", f"invalid JSON in metadata.jsonl ({err})"))
            continue
        image_id = meta.get("image_id", line_no - 1)
        if not meta.get("file_name"):
            early.append(Problem(image_id, "missing field 'file_name'"))
            continue
        if "objects" not in meta:
            early.append(Problem(image_id, "missing field 'objects'"))
            continue
        rows.append((image_id, str(folder / meta["file_name"]), meta.get("width"), meta.get("height"),
                     meta["objects"]))
    return _check_objects_table(rows, class_names, bbox_format, str(folder), check, len(rows) + len(early), early,
                                "imagefolder")


def load_imagefolder(folder: str | Path, class_names: list[str] | None = None, bbox_format: str = "xywh",
                     on_error: OnError = "raise", check_images: bool | str = "header", cache_dir=None) -> DetectionData:
    """Load an imagefolder with ``metadata.jsonl`` (the ``datasets`` imagefolder layout for detection):
    one JSON object per line with ``file_name`` and ``objects: {bbox: [[x, y, w, h], ...], category: [...]}``
    (``categories`` is accepted too), optionally ``image_id``, ``width`` and ``height``.

    Read directly rather than through ``datasets.load_dataset("imagefolder")`` so that a missing or broken
    file is reported with its record instead of failing the whole load."""
    folder = Path(folder)
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        raise InvalidDatasetError(str(folder), [Problem("-", "no metadata.jsonl in the folder")], 0)
    check = check_mode(check_images)
    _box_converter(bbox_format)
    options = {"class_names": class_names, "bbox_format": bbox_format, "check": check}
    return load_cached("imagefolder", [metadata], options,
                       lambda: _check_imagefolder(folder, class_names, bbox_format, check), on_error, cache_dir)


def load_detection_data(source, split: str = "train", on_error: OnError = "raise", **kwargs) -> DetectionData:
    """Load one split of any supported layout; see :func:`data_layouts.load_detection_data`."""
    from .data_layouts import load_detection_data as load

    return load(source, split, on_error, **kwargs)
