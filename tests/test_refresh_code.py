"""`detrkit refresh-code`: the code files a save_pretrained folder needs are those save_pretrained writes (from
auto_map by transformers' relative-import rule); the command restores a stale, missing or extra file and touches
neither the weights nor the JSON files; --check reports and writes nothing."""
import shutil
from pathlib import Path

import torch
from helpers import SMALL

from detrkit.deploy.refresh_code import code_changes, hub_code_files, main
from detrkit.modeling import DetrConfig, DetrForObjectDetection
from detrkit.processing import DetrImageProcessor

ROOT = Path(__file__).resolve().parents[1]


def untouched(folder: Path) -> dict:
    """Bytes and modification times of everything but the code."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()
            if p.is_file() and p.suffix != ".py"}


def test_the_set_is_what_save_pretrained_writes(tmp_path):
    torch.manual_seed(0)
    DetrForObjectDetection(DetrConfig(**SMALL)).save_pretrained(tmp_path)
    DetrImageProcessor().save_pretrained(tmp_path)
    needed = hub_code_files(tmp_path)
    assert set(needed) == {p.name for p in tmp_path.glob("*.py")}
    assert {"modeling_detr.py", "configuration_detr.py", "image_processing_detr.py", "loss.py"} <= set(needed)
    assert not code_changes(tmp_path)


def test_restores_stale_missing_and_extra_files_and_check_reports(tmp_path, capsys):
    folder = tmp_path / "checkpoint"
    shutil.copytree(ROOT / "checkpoints" / "detr-shapes-a", folder, ignore=shutil.ignore_patterns("training"))
    assert main([str(folder)]) == 0  # in step with the working tree's package, whatever it holds today
    needed = hub_code_files(folder)
    (folder / "loss.py").write_text("# an older loss.py\n")
    (folder / "matcher.py").unlink()
    (folder / "renamed_module.py").write_text("# a module the package no longer has\n")
    before = untouched(folder)
    capsys.readouterr()

    assert main([str(folder), "--check"]) == 1
    out = capsys.readouterr().out
    assert "stale: loss.py" in out and "missing: matcher.py" in out and "extra: renamed_module.py" in out
    assert f"detrkit refresh-code --remove-extra {folder}" in out
    assert (folder / "loss.py").read_text() == "# an older loss.py\n" and not (folder / "matcher.py").exists()

    assert main([str(folder)]) == 0  # a file it does not need may be the user's: listed, kept
    out = capsys.readouterr().out
    assert "rewritten: loss.py" in out and "added: matcher.py" in out and "extra, kept" in out
    assert (folder / "renamed_module.py").exists()
    assert main([str(folder), "--remove-extra"]) == 0
    assert "removed: renamed_module.py" in capsys.readouterr().out
    assert {p.name for p in folder.glob("*.py")} == set(needed)
    assert all((folder / name).read_bytes() == source.read_bytes() for name, source in needed.items())
    assert not list(folder.glob(".*.tmp"))
    assert untouched(folder) == before  # model.safetensors, config.json, README.md: same bytes, same mtime

    assert main([str(folder), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_a_folder_without_config_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "not a save_pretrained folder" in capsys.readouterr().err
