"""Every message about a model folder is detrkit's own: a truncated or missing weights file is one line naming
the file, a folder without preprocessor_config.json gets the family's default processor with a warning, a
negative category_id stops at the processor, and a fine-tune prints none of transformers' warnings about the
class head it replaces (the run says so in its own words)."""
import logging
import shutil

import pytest
import torch
from helpers import SMALL
from PIL import Image

from detrkit.cli import dispatch as cli
from detrkit.modeling import DetrConfig, DetrForObjectDetection
from detrkit.processing import DetrImageProcessor, DetrProcessingError

RUN = ["--image-size", "64", "--batch-size", "2", "--num-workers", "0", "--report-to", "[]", "--epochs", "1",
       "--max-train-samples", "2", "--max-eval-samples", "2"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny detrkit DETR (4 classes) + processor, as save_pretrained writes them."""
    folder = tmp_path_factory.mktemp("detr")
    torch.manual_seed(0)
    config = DetrConfig(**SMALL, id2label={i: f"class_{i}" for i in range(SMALL["num_labels"])})
    DetrForObjectDetection(config).save_pretrained(folder)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    return folder


def copy_of(saved, tmp_path, name="model"):
    folder = tmp_path / name
    shutil.copytree(saved, folder)
    return folder


def run(capfd, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def only_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def commands(folder, tmp_path):
    image = tmp_path / "image.png"
    Image.new("RGB", (80, 64), (90, 120, 60)).save(image)
    return {
        "train": ["train", "--model", folder, "--data", "shapes-b", "--output-dir", tmp_path / "run", *RUN],
        "evaluate": ["evaluate", folder, "--data", "shapes-b", "--max-samples", "2"],
        "predict": ["predict", folder, image, "--output-dir", tmp_path / "drawn"],
        "export": ["export", folder, "--output", tmp_path / "model.onnx"],
    }


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "export"])
def test_truncated_weights_file_is_one_line(saved, tmp_path, capfd, command):
    folder = copy_of(saved, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
    code, _, err = run(capfd, *commands(folder, tmp_path)[command])
    line = only_line(err)
    assert code == 2 and line.startswith(f"detrkit {command}: error: ")
    assert f"{weights}: truncated or corrupt weights file" in line, line


@pytest.mark.parametrize("command", ["train", "predict"])
def test_missing_weights_file_is_one_line(saved, tmp_path, capfd, command):
    folder = copy_of(saved, tmp_path)
    (folder / "model.safetensors").unlink()
    code, _, err = run(capfd, *commands(folder, tmp_path)[command])
    assert code == 2 and "no weights file inside (expected model.safetensors)" in only_line(err)


@pytest.mark.parametrize("command", ["predict", "export"])
def test_folder_without_processor_uses_the_family_default(saved, tmp_path, capfd, command):
    folder = copy_of(saved, tmp_path)
    (folder / "preprocessor_config.json").unlink()
    code, out, err = run(capfd, *commands(folder, tmp_path)[command])
    assert code == 0, (out + err)[-3000:]
    assert f"warning: {folder} has no preprocessor_config.json; using the default DetrImageProcessor" in err
    assert "huggingface.co" not in out + err


def test_a_broken_shard_is_named(tmp_path):
    from detrkit.inference.model_folder import check_weights_file

    torch.manual_seed(0)
    DetrForObjectDetection(DetrConfig(**SMALL)).save_pretrained(tmp_path, max_shard_size="200KB")
    check_weights_file(tmp_path, "sharded")
    shard = sorted(tmp_path.glob("model-0*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{shard.name}: truncated or corrupt weights file"):
        check_weights_file(tmp_path, "sharded")
    shard.unlink()
    with pytest.raises(OSError, match=f"{shard.name}: missing"):
        check_weights_file(tmp_path, "sharded")


def test_processor_rejects_a_negative_category_id():
    image = torch.zeros(3, 32, 32)
    annotation = {"image_id": 7, "annotations": [{"bbox": [1, 1, 5, 5], "category_id": 0},
                                                 {"bbox": [2, 2, 5, 5], "category_id": -1}]}
    with pytest.raises(DetrProcessingError, match=r"image 0, annotation 1: 'category_id' must be 0 or more, got -1"):
        DetrImageProcessor()(images=[image], annotations=[annotation], return_tensors="pt")


@pytest.mark.slow
@pytest.mark.e2e
def test_fine_tune_prints_no_transformers_head_warnings(saved, tmp_path, capfd, caplog):
    """shapes-b has 5 classes, the checkpoint 4: a new class head, announced by the run only. Without a
    processor in the folder, train warns once and sizes the family's default."""
    folder = copy_of(saved, tmp_path)
    (folder / "preprocessor_config.json").unlink()
    # transformers' loggers do not propagate and their handler writes to the stderr of import time, which
    # pytest's capture never sees: listen on the library's logger itself
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(caplog.handler)
    try:
        code, out, err = run(capfd, *commands(folder, tmp_path)["train"])
    finally:
        library_logger.removeHandler(caplog.handler)
    log = out + err + caplog.text
    assert code == 0, log[-3000:]
    assert "new class head for 5 classes (was 4)" in log
    assert "no preprocessor_config.json; using the default DetrImageProcessor" in log
    assert "LOAD REPORT" not in log and "You passed `num_labels" not in log and "MISMATCH" not in log


def test_load_report_is_held_only_when_it_lists_nothing_but_the_head(caplog):
    from detrkit.training.load_report import REPORT_LOGGER, hold_load_report

    logger = logging.getLogger(REPORT_LOGGER)
    logger.addHandler(caplog.handler)  # transformers' loggers do not propagate to the root logger
    try:
        for only_head in (True, False):
            caplog.clear()
            with hold_load_report() as release:
                logger.warning("Model LOAD REPORT from: somewhere")
                logger.warning("another warning")
                release(only_head=only_head)
            messages = [r.getMessage() for r in caplog.records]
            assert "another warning" in messages
            assert ("Model LOAD REPORT from: somewhere" in messages) is not only_head
    finally:
        logger.removeHandler(caplog.handler)
