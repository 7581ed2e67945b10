"""`detrkit refresh-code [FOLDER ...]`: rewrite the code files of save_pretrained folders from the installed detrkit.

A folder that plain transformers loads with `trust_remote_code=True` carries copies of detrkit's modeling /
processing files: the file defining each class its config.json / preprocessor_config.json `auto_map` names, plus the
files those import with same-folder relative imports (transformers' own rule, `get_relative_import_files`, which
save_pretrained follows). This command recomputes that set from today's package and makes the folder hold exactly
it: stale copies rewritten, missing ones added. Other *.py files (a module since renamed or removed, or a script of
the user's) are listed and kept; `--remove-extra` deletes them. Weights, JSON files and the model card are not
touched. Each file is written to a temporary file beside it, then renamed.

Default FOLDER: every checkpoints/*/ of the checkout. `--check` writes nothing and exits with status 1 when a
folder is out of date. A change that needs new config keys or weights needs a re-save (save_pretrained), not this.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from detrkit.errors import UsageError

HUB_CODE_PACKAGES = ("detrkit.modeling", "detrkit.processing")  # the library that travels as remote code
AUTO_MAP_FILES = ("config.json", "preprocessor_config.json", "processor_config.json")


def package_folders() -> list[Path]:
    """The folders of detrkit's Hub-code packages (found without importing them: no torch)."""
    from importlib.util import find_spec

    return [Path(location) for name in HUB_CODE_PACKAGES for location in find_spec(name).submodule_search_locations]


def auto_map_entries(folder: Path) -> list[tuple[str, str, str]]:
    """(json file, Auto class, "module.Class") for every class the folder's JSON files name in auto_map."""
    entries = []
    for name in AUTO_MAP_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            auto_map = json.loads(path.read_text()).get("auto_map") or {}
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        for auto_class, references in auto_map.items():
            for reference in references if isinstance(references, (list, tuple)) else [references]:
                if reference:  # a tokenizer's (slow, fast) pair may hold None
                    entries.append((name, auto_class, reference))
    return entries


def hub_code_files(folder: str | Path) -> dict[str, Path]:
    """{file name in the folder: the package's source file} that `folder` needs for trust_remote_code: the files
    defining the classes its auto_map names and, recursively, their same-folder relative imports."""
    from transformers.dynamic_module_utils import get_relative_import_files

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a save_pretrained folder (no config.json)")
    entries = auto_map_entries(folder)
    if not entries:
        raise ValueError(f"{folder}: its JSON files name no auto_map classes, so it carries no remote code")
    sources = package_folders()
    needed: dict[str, Path] = {}
    for json_name, auto_class, reference in entries:
        module, _, class_name = reference.rpartition(".")
        found = [s / f"{module}.py" for s in sources if (s / f"{module}.py").is_file()] if "--" not in module else []
        if not found or not re.search(rf"^class {re.escape(class_name)}\b", found[0].read_text(), re.MULTILINE):
            raise ValueError(f"{folder / json_name}: auto_map {auto_class} names {reference}, which this detrkit does "
                             f"not define (looked in {', '.join(HUB_CODE_PACKAGES)}); re-save the model with "
                             "save_pretrained instead")
        for source in [found[0], *map(Path, get_relative_import_files(found[0]))]:
            if not source.is_file():
                raise FileNotFoundError(f"{found[0]}: imports {source.stem} relatively, but {source} does not exist")
            if needed.setdefault(source.name, source) != source:
                raise ValueError(f"{folder}: two source files named {source.name} ({needed[source.name]}, {source}) "
                                 "would land on one file of the flat Hub folder")
    return needed


@dataclass
class CodeChanges:
    """How a folder's code files differ from what it needs (file names)."""

    folder: Path
    needed: dict[str, Path]
    stale: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.stale or self.missing or self.extra)

    def describe(self, check: bool, remove_extra: bool = False) -> str:
        if not self:
            return f"{shown(self.folder)}: up to date ({len(self.needed)} code files)"
        kept = "extra, kept (not needed by auto_map; --remove-extra deletes)"
        words = ("stale", "missing", "extra") if check else ("rewritten", "added", "removed" if remove_extra else kept)
        parts = [f"{word}: {', '.join(names)}" for word, names in zip(words, (self.stale, self.missing, self.extra))
                 if names]
        return f"{shown(self.folder)}: " + "; ".join(parts)


def code_changes(folder: str | Path) -> CodeChanges:
    """What `refresh_code(folder)` would change (nothing written)."""
    folder = Path(folder)
    needed = hub_code_files(folder)
    present = {p.name for p in folder.glob("*.py") if p.is_file()}
    changes = CodeChanges(folder, needed)
    changes.stale = sorted(n for n in present & needed.keys() if (folder / n).read_bytes() != needed[n].read_bytes())
    changes.missing = sorted(needed.keys() - present)
    changes.extra = sorted(present - needed.keys())
    return changes


def refresh_code(folder: str | Path, check: bool = False, remove_extra: bool = False) -> CodeChanges:
    """Rewrite `folder`'s stale and missing code files from the package (unless `check`), and delete the *.py files
    it does not need only with `remove_extra` (they may be the user's); returns what differed."""
    changes = code_changes(folder)
    if not check:
        for name in changes.stale + changes.missing:
            write_atomically(changes.folder / name, changes.needed[name].read_bytes())
        for name in changes.extra if remove_extra else ():
            (changes.folder / name).unlink()
    return changes


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename it over `path` (readers see old or new, never
    half); the file keeps its permissions, a new one gets the umask's."""
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def default_folders() -> list[Path]:
    """The checkout's shipped checkpoints (checkpoints/*/ with a config.json)."""
    from detrkit.checkout import checkout_root

    root = checkout_root()
    if root is None:
        raise UsageError("detrkit is not installed from a checkout, so there are no shipped checkpoints: name the "
                         "folders (detrkit refresh-code FOLDER ...)")
    return sorted(p.parent for p in (root / "checkpoints").glob("*/config.json"))


def shown(folder: Path) -> str:
    """`folder` relative to the working directory where it lies below it."""
    try:
        return str(folder.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(folder)


def command_line(changes: list[CodeChanges]) -> str:
    """The command that brings the folders of `changes` up to date."""
    extra = ["--remove-extra"] if any(c.extra for c in changes) else []
    return " ".join(["detrkit refresh-code", *extra, *(shown(c.folder) for c in changes)])


def main(argv: list[str] | None = None) -> int:
    """User errors (no config.json, an auto_map naming code detrkit lacks) end as one line and exit status 2."""
    from detrkit.cli.runner import run_command

    return run_command("refresh-code", argv, command)


def command(argv: list[str]) -> int:
    args = argument_parser().parse_args(argv)
    folders = [Path(f) for f in args.folders] or default_folders()
    changed = []
    for folder in folders:
        changes = refresh_code(folder, check=args.check, remove_extra=args.remove_extra)
        print(changes.describe(args.check, args.remove_extra))
        if changes:
            changed.append(changes)
    if args.check and changed:
        print(f"{len(changed)} folder(s) out of date; to rewrite their code: {command_line(changed)}")
        return 1
    return 0


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detrkit refresh-code", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", metavar="FOLDER",
                        help="save_pretrained folders (default: the checkout's checkpoints/*/)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; list stale, missing and extra code files and exit with status 1 when a "
                             "folder has any (default: rewrite them)")
    parser.add_argument("--remove-extra", action="store_true",
                        help="also delete the *.py files a folder does not need (default: list and keep them)")
    return parser
