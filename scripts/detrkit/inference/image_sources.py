"""What `detrkit predict` reads: image files, folders, globs and http(s) URLs as `Source`s, and the distinct
output names of their drawings."""
from __future__ import annotations

import glob
import io
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
URL_TIMEOUT_S = 30


@dataclass
class Source:
    """One input image: what the user named it (`name`), how to read it (`read`), an id for COCO results."""

    name: str
    read: Any  # () -> PIL image
    parts: tuple[str, ...]  # path parts used to make output names unique
    image_id: int | None = None


def is_url(item: str) -> bool:
    return urllib.parse.urlparse(item).scheme in ("http", "https")


def read_url(url: str):
    from PIL import Image

    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            return Image.open(io.BytesIO(response.read()))
    except OSError as error:  # URLError, HTTPError and timeouts are OSErrors
        raise OSError(f"{url}: cannot download the image ({error})") from None


def read_file(path: Path):
    from detrkit.data.images import open_image

    return open_image(path)


def read_rgb(source: Source):
    try:
        return source.read().convert("RGB")
    except OSError as error:
        raise OSError(f"{source.name}: cannot read the image ({error})") from None


def url_source(item: str) -> list[Source]:
    parsed = urllib.parse.urlparse(item)
    name = Path(parsed.path).name or parsed.netloc
    return [Source(item, lambda: read_url(item), (parsed.netloc, *Path(parsed.path).parent.parts[1:], name))]


def file_sources(paths: list[Path]) -> list[Source]:
    return [Source(str(p), (lambda p=p: read_file(p)), p.resolve().parts) for p in paths]


def folder_source(folder: Path) -> list[Source]:
    return file_sources(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))


def glob_source(pattern: str) -> list[Source]:
    matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
    return file_sources([p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES])


def input_kind(item: str) -> str:
    """"url", "glob", "folder" or "file" (a seam: other kinds, such as video, dispatch here)."""
    if is_url(item):
        return "url"
    if any(c in item for c in "*?[") and not Path(item).exists():
        return "glob"
    return "folder" if Path(item).is_dir() else "file"


READERS = {"url": url_source, "glob": glob_source, "folder": lambda item: folder_source(Path(item)),
           "file": lambda item: file_sources([Path(item)])}


def collect_sources(inputs: list[str]) -> list[Source]:
    sources = []
    for item in inputs:
        kind = input_kind(item)
        if kind == "file" and not Path(item).is_file():
            raise FileNotFoundError(f"{item}: no such image, folder, glob match or URL")
        found = READERS[kind](item)
        if not found and kind in ("folder", "glob"):
            raise FileNotFoundError(f"{item}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
        sources += found
    if not sources:
        raise FileNotFoundError(f"no images found in {inputs}")
    return sources


def output_names(sources: list[Source]) -> list[str]:
    """File stems for the drawings: the input's stem, widened by its parent folders where two inputs share it."""
    depth = [1] * len(sources)
    while True:
        names = ["__".join(s.parts[-d:]) for s, d in zip(sources, depth)]
        names = [str(Path(n).with_suffix("")) if "." in Path(n).name else n for n in names]
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            return names
        grown = False
        for i, name in enumerate(names):
            if name in clashes and depth[i] < len(sources[i].parts):
                depth[i] += 1
                grown = True
        if not grown:  # the very same input twice: number them
            return numbered(names)


def numbered(names: list[str]) -> list[str]:
    """The second and later copies of a name get -2, -3, ..."""
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return result
