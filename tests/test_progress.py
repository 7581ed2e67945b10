"""Progress output (detrkit.progress): a redrawn tqdm bar on a terminal, one plain line per epoch / evaluation where
the output is a file or a pipe (CI, nohup, `> log`), no carriage returns; the loader iterated the same way in both."""
import io
import os
import re
import subprocess
import sys

import pytest

from detrkit.progress import LineProgress, progress

TINY = ("model_overrides={backbone: resnet18, d_model: 32, encoder_layers: 1, decoder_layers: 1, "
        "encoder_attention_heads: 2, decoder_attention_heads: 2, encoder_ffn_dim: 64, decoder_ffn_dim: 64, "
        "num_queries: 10}")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def epochs(stream, count=3, batches=4):
    for epoch in range(count):
        bar = progress(range(batches), f"epoch {epoch + 1}/{count}", total=batches, file=stream)
        for step in bar:
            bar.set_postfix(loss=f"{1 / (step + 1):.3f}", lr="8.0e-04")
        bar.close()
    for batch in progress(range(2), "evaluating", leave=False, file=stream):
        pass
    return stream.getvalue()


def test_a_file_gets_one_line_per_epoch_and_evaluation():
    lines = epochs(io.StringIO()).splitlines()
    assert "\r" not in "".join(lines)
    assert len(lines) == 4, lines
    for epoch, line in enumerate(lines[:3], 1):
        assert re.fullmatch(rf"epoch {epoch}/3: 4/4 batches in 00:00 \(.* (batch/s|s/batch)\), loss=0.250, lr=8.0e-04",
                            line), line
    assert lines[3].startswith("evaluating: 2/2 batches in ")


def test_a_terminal_keeps_the_bar():
    text = epochs(Terminal())
    assert "\r" in text and "epoch 3/3: 100%|" in text and "batches in" not in text


def test_disabled_writes_nothing():
    stream = io.StringIO()
    for _ in progress(range(3), "epoch 1/1", disable=True, file=stream):
        pass
    assert stream.getvalue() == ""


def test_the_loader_is_iterated_as_under_the_bar():
    """tqdm.auto opens an iterator of its own (a DataLoader draws its base seed for each): the line must not change
    how many, or a run's data order would depend on where its output goes."""
    class Loader:
        opened = 0

        def __iter__(self):
            Loader.opened += 1
            return iter(range(3))

        def __len__(self):
            return 3

    counts = []
    for stream in (Terminal(), io.StringIO()):
        Loader.opened = 0
        bar = progress(Loader(), "epoch 1/1", file=stream)
        assert isinstance(bar, LineProgress) == (not stream.isatty())
        assert list(bar) == [0, 1, 2]
        counts.append(Loader.opened)
    assert counts[0] == counts[1]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_training_run_into_a_pipe_logs_lines(tmp_path):
    """The smallest training run, its output a pipe: one line per epoch and per evaluation, no '\\r'."""
    env = {**os.environ, "DETRKIT_DISABLE_KERNELS": "1", "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "-m", "detrkit", "train", "--model", "deformable-detr", "--set", TINY,
               "--data", "shapes-b", "--data-cache", str(tmp_path / "data"), "--image-size", "64",
               "--builtin-num-train", "4", "--builtin-num-val", "2", "--batch-size", "2", "--epochs", "2",
               "--eval-every", "1", "--num-workers", "0", "--report-to", "[]", "--predictions-image", "false",
               "--output-dir", str(tmp_path / "run")]
    result = subprocess.run(command, env=env, capture_output=True, timeout=600)  # bytes: text mode hides '\r'
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, (stdout + stderr)[-3000:]
    # transformers' own bar for writing the weights (one per save) is not detrkit's: HF_HUB_DISABLE_PROGRESS_BARS
    ours = re.sub(r"[^\n]*Writing model shards[^\n]*", "", stdout + stderr)
    assert "\r" not in ours, ours[-3000:]
    lines = stderr.splitlines()
    epoch_lines = [line for line in lines if re.match(r"epoch \d/2: ", line)]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"], stderr[-3000:]
    assert all(" 2/2 batches in " in line and "loss=" in line and "lr=" in line for line in epoch_lines)
    assert sum(line.startswith("evaluating: ") for line in lines) >= 2
