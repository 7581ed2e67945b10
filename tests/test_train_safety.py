"""Nothing lost: a checkpoint whose write fails midway leaves the previous one loadable, and saved files get
the process's usual permissions (not the 0600 of a private temporary file)."""
import os

import accelerate.utils.other
import pytest
import safetensors.torch
import torch
from accelerate import Accelerator

from detrkit.training.checkpoint import load_checkpoint, read_index, resolve_resume, save_checkpoint, usual_permissions


def make_run():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def step(model, optimizer):
    model(torch.randn(3, 4)).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_a_write_failing_midway_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    accelerator, model, optimizer = make_run()
    root = tmp_path / "checkpoints"
    step(model, optimizer)
    save_checkpoint(accelerator, root, "step-0000001", {"global_step": 1})
    good = {k: v.clone() for k, v in model.state_dict().items()}
    step(model, optimizer)

    real_save = safetensors.torch.save_file

    def disk_full(tensors, filename, *args, **kwargs):  # half the bytes land, then the disk is full
        real_save(tensors, filename, *args, **kwargs)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(accelerate.utils.other, "safe_save_file", disk_full)  # accelerate's weights writer
    with pytest.raises(OSError, match=r"writing checkpoint step-0000002 failed .*No space left.*step-0000001.* is "
                                      r"intact"):
        save_checkpoint(accelerator, root, "step-0000002", {"global_step": 2})
    monkeypatch.undo()

    assert read_index(root)["latest"] == "step-0000001"
    assert sorted(p.name for p in root.iterdir()) == ["index.json", "step-0000001"]  # no half-written folder left
    fresh_accelerator, fresh_model, fresh_optimizer = make_run()
    state = load_checkpoint(fresh_accelerator, resolve_resume("latest", root))
    assert state == {"global_step": 1}
    for name, value in fresh_model.state_dict().items():
        assert torch.equal(value, good[name]), name


def test_saved_files_get_the_usual_permissions(tmp_path):
    accelerator, model, optimizer = make_run()
    old = os.umask(0o027)
    try:
        save_checkpoint(accelerator, tmp_path / "checkpoints", "step-0000001", {"global_step": 1})
        private = tmp_path / "private.bin"
        private.write_bytes(b"x")
        private.chmod(0o600)
        usual_permissions(tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o640}, modes
