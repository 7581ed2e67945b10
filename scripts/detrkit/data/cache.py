"""The on-disk cache of validated records: an Arrow file (``record_table.py``) per source, memory-mapped.

Keyed by the annotation files' paths, sizes and modification times (and the content of small files): a second
load maps the cache instead of parsing and checking again. Large sources are parsed in a forked child process,
one builder per cache file across processes; the oldest files are evicted beyond ``MAX_CACHE_FILES``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .problems import BoxReport, Problem
from .record_table import RecordTable, read_table, records_to_table, write_table
from .records import Categories, DetectionData
from .validation import CheckedRecords, OnError, check_on_error, finish

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["cache_path", "listing_digest", "load_cached", "records_cache_dir"]

logger = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: the one box rule (boxes clipped / dropped, reported in the metadata's 'boxes')
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
                                   meta["layout"], BoxReport.from_json(meta["boxes"]))


def _metadata(checked: CheckedRecords) -> dict:
    return {"names": list(checked.categories.names), "original_ids": list(checked.categories.original_ids),
            "problems": [[p.image_id, p.message] for p in checked.problems], "num_entries": checked.num_entries,
            "source": checked.source, "layout": checked.layout, "boxes": checked.boxes.to_json()}


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
    check_on_error(on_error)
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
