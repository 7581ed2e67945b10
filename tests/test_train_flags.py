"""Folder names and ids reach the run as written, through flags, `--set` and config files: YAML never turns them
into numbers, booleans, dates or null."""
import json

import pytest
import yaml

from detrkit.training.config import format_config, parse_config

NAMES = ["010", "0x1F", "on", "no", "null", "~", "1e3", "2026-12-07", "my runs/with spaces", "host:dir", "c#d",
         "yes", "[a]", "{b}", "-1", ".inf"]
TEXT_FIELDS = ("model", "data", "output_dir", "resume", "push_to_hub")


def _fields(config):
    return tuple(getattr(config, name) for name in TEXT_FIELDS)


@pytest.mark.parametrize("name", NAMES)
def test_flags_keep_their_text(name):
    argv = [argument for field in TEXT_FIELDS for argument in (f"--{field.replace('_', '-')}", name)]
    assert _fields(parse_config(argv)) == (name,) * len(TEXT_FIELDS)


@pytest.mark.parametrize("name", NAMES)
def test_set_keeps_the_text_of_text_fields(name):
    argv = [argument for field in TEXT_FIELDS for argument in ("--set", f"{field}={name}")]
    assert _fields(parse_config(argv)) == (name,) * len(TEXT_FIELDS)


@pytest.mark.parametrize("name", [n for n in NAMES if not n.startswith(("[", "{", "-"))])  # YAML syntax there
def test_config_file_keeps_the_text_of_text_fields(tmp_path, name):
    plain = tmp_path / "plain.yaml"
    plain.write_text("".join(f"{field}: {name}\n" for field in TEXT_FIELDS))
    quoted = tmp_path / "quoted.yaml"
    quoted.write_text(yaml.safe_dump({field: name for field in TEXT_FIELDS}))
    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps({field: name for field in TEXT_FIELDS}))
    for file in (plain, quoted, as_json):
        assert _fields(parse_config(["--config", str(file)])) == (name,) * len(TEXT_FIELDS), file.read_text()


def test_the_other_fields_are_still_typed(tmp_path):
    config = parse_config(["--model", "m", "--data", "d", "--epochs", "1e3", "--lr", "2e-4", "--ema", "--horizontal-flip",
                           "no", "--mixed-precision", "no", "--memory-savers", "on", "--scales", "[96, 128]",
                           "--model-overrides", "{d_model: 64}", "--set", "clip_grad_norm=1e-1",
                           "--set", "model_overrides.num_queries=50", "--set", "report_to=[]"])
    assert (config.epochs, config.lr, config.ema, config.horizontal_flip) == (1000, 2e-4, True, False)
    assert (config.mixed_precision, config.memory_savers, config.scales) == ("no", "on", [96, 128])
    assert config.model_overrides == {"d_model": 64, "num_queries": 50} and config.clip_grad_norm == 0.1
    assert config.report_to == []
    file = tmp_path / "c.yaml"
    file.write_text("model: m\ndata: d\nepochs: 12\nema: on\nmixed_precision: no\nresume:\n"
                    "detector_step: {epochs: 3, output_dir: 010}\n")
    config = parse_config(["--config", str(file)])
    assert (config.epochs, config.ema, config.mixed_precision, config.resume) == (12, True, "no", None)
    assert config.detector_step == {"epochs": 3, "output_dir": "010"}


def test_wrong_values_are_named():
    with pytest.raises(ValueError, match="--epochs ten: .*expected a number"):
        parse_config(["--model", "m", "--data", "d", "--epochs", "ten"])
    with pytest.raises(ValueError, match="--ema maybe: expected true or false"):
        parse_config(["--model", "m", "--data", "d", "--ema", "maybe"])
    with pytest.raises(ValueError, match="epochs: expected a whole number"):
        parse_config(["--model", "m", "--data", "d", "--set", "epochs=2.5"])
    with pytest.raises(ValueError, match="detector_step: unknown config key"):
        parse_config(["--model", "m", "--data", "d", "--set", "detector_step.epoch=2"])


def test_an_empty_value_unsets_and_the_printed_config_reads_back(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("model: m\ndata: d\noutput_dir: runs/a\n")
    assert parse_config(["--config", str(file), "--set", "output_dir="]).output_dir is None
    config = parse_config(["--model", "010", "--data", "null", "--output-dir", "2026-12-07", "--epochs", "3"])
    printed = format_config(config, []).split("\n", 1)[1]
    file.write_text("\n".join(line[2:] for line in printed.splitlines()))
    assert parse_config(["--config", str(file)]) == config
