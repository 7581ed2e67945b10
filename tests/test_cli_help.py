"""`detrkit COMMAND --help`: fast (no torch imported to build it), every option once, each with a help line and
its default; the old spellings still parse; one vocabulary across commands."""
import argparse
import importlib
import subprocess
import sys
import time

import pytest

PARSERS = {  # command line -> the function that builds its parser
    ("train",): "detrkit.training.config:argument_parser",
    ("evaluate",): "detrkit.inference.evaluate_command:argument_parser",
    ("predict",): "detrkit.inference.predict_command:argument_parser",
    ("data", "check"): "detrkit.data.check:argument_parser",
    ("convert",): "detrkit.conversion.convert_command:build_parser",
    ("export",): "detrkit.deploy.export_command:argument_parser",
    ("visualize",): "detrkit.deploy.visualize_command:argument_parser",
    ("demo",): "detrkit.deploy.demo_command:argument_parser",
    ("space",): "detrkit.deploy.space:argument_parser",
    ("refresh-code",): "detrkit.deploy.refresh_code:argument_parser",
}
COMMANDS = list(PARSERS)


def parser_of(command: tuple) -> argparse.ArgumentParser:
    module, function = PARSERS[command].split(":")
    parser = getattr(importlib.import_module(module), function)()
    for word in command[1:]:  # a sub-command's own parser (`data check`)
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return parser


def visible_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction)]


def test_every_command_is_covered():
    from detrkit.cli.dispatch import COMMANDS as TABLE

    assert {c[0] for c in COMMANDS} == set(TABLE)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_is_fast_and_imports_no_torch(command):
    code = ("import sys, time; from detrkit.cli.dispatch import main; start = time.perf_counter(); "
            f"code = main({list(command) + ['--help']!r}); "
            "print('SECONDS', time.perf_counter() - start); print('TORCH', 'torch' in sys.modules); sys.exit(code)")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "usage: detrkit" in result.stdout
    assert "TORCH False" in result.stdout, f"{' '.join(command)} --help imported torch"
    assert elapsed < 2, f"{' '.join(command)} --help took {elapsed:.1f} s"  # generous: about 0.1 s unloaded


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_option_once_with_help_and_default(command):
    options = visible_options(parser_of(command))
    spellings = [s for a in parser_of(command)._actions for s in a.option_strings]
    assert len(spellings) == len(set(spellings))
    for action in options:
        name = action.option_strings[0]
        assert action.help and action.help.strip(), f"{name} has no help line"
        assert action.help.count("(default:") <= 1, f"{name} shows two defaults: {action.help}"
        if not action.required and not isinstance(action, argparse._AppendAction):  # repeatable: none by default
            assert "default" in action.help, f"{name} does not say its default: {action.help}"
        assert "chosen for the run" not in action.help


def test_train_help_lists_choices_groups_and_formats():
    parser = parser_of(("train",))
    actions = {a.dest: a for a in parser._actions}
    for name in ("task", "schedule", "backbone_policy", "mixed_precision", "memory_savers", "invalid_records"):
        assert actions[name].metavar.startswith("{"), name  # {a,b,c}, as argparse writes choices
    assert "'{KEY: VALUE, ...}'" == actions["model_overrides"].metavar == actions["detector_step"].metavar
    titles = [g.title for g in parser._action_groups]
    for title in ("model", "data", "images", "schedule", "optimisation", "evaluation", "output / sharing",
                  "distillation"):
        assert title in titles
    assert actions["resume"].help.endswith("(default: off)")


def test_config_groups_hold_every_field_once():
    from detrkit.training.config import GROUPS, TrainConfig

    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(TrainConfig.field_names())


def test_export_help_constants_match_the_exporter():
    pytest.importorskip("onnx")
    from detrkit.deploy import export, export_command

    assert (export_command.MIN_OPSET, export_command.MSDA_OPS) == (export.MIN_OPSET, export.MSDA_OPS)


def test_old_spellings_still_parse():
    evaluate = parser_of(("evaluate",)).parse_args(["m", "--data", "d", "--max-samples", "3", "--image-size", "64"])
    assert (evaluate.max_eval_samples, evaluate.builtin_image_size) == (3, 64)
    predict = parser_of(("predict",)).parse_args(["m", "x.png", "--no-drawings"])
    assert predict.drawings is False
    from detrkit.training.config import apply_overrides, build_config, parse_config

    config = parse_config(["--model", "m", "--data", "d", "--predictions-image", "false", "--log-with", "[]"])
    assert (config.drawings, config.report_to) == (False, [])
    assert build_config(apply_overrides({"predictions_image": False}, [])).drawings is False


def test_one_vocabulary():
    """The same name means the same thing: --trust-remote-code [BOOL] and --device wherever a model loads."""
    for command in (("train",), ("evaluate",), ("predict",), ("export",), ("demo",)):
        actions = {s: a for a in parser_of(command)._actions for s in a.option_strings}
        assert "--device" in actions, command
    for command in (("train",), ("evaluate",), ("predict",), ("export",), ("visualize",), ("demo",)):
        actions = {s: a for a in parser_of(command)._actions for s in a.option_strings}
        assert actions["--trust-remote-code"].nargs == "?", command
    predict = parser_of(("predict",))
    assert predict.parse_args(["m", "x.png", "--drawings", "false"]).drawings is False
    assert predict.parse_args(["m", "x.png", "--trust-remote-code"]).trust_remote_code is True
    with pytest.raises(SystemExit):
        parser_of(("evaluate",)).parse_args(["m", "--data", "d", "--device", "gpu"])


def test_version_and_debug(capsys):
    from detrkit.cli.dispatch import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("detrkit ")
    assert main(["convert", "/no/such/file.pth", "/tmp/out-never-written"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("detrkit convert: error:") and "Traceback" not in error


def test_train_device_cpu_is_accelerate_cpu(monkeypatch):
    from detrkit.training.config import parse_config
    from detrkit.training.accelerate_device import select_device, uses_cpu

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    config = parse_config(["--model", "m", "--data", "d", "--device", "cpu"])
    select_device(config, environ={})
    assert uses_cpu(config)
    with pytest.raises(ValueError, match="several processes"):
        select_device(parse_config(["--model", "m", "--data", "d", "--device", "cuda:1"]), environ={"WORLD_SIZE": "2"})


def test_listed_choices_parse_as_listed():
    """Every choice --help lists is accepted as written (YAML would read `on` / `off` / `no` as booleans)."""
    from detrkit.training.config import CHOICES, parse_config

    for name, allowed in CHOICES.items():
        for value in allowed:
            config = parse_config(["--model", "m", "--data", "d", f"--{name.replace('_', '-')}", value])
            assert getattr(config, name) == value
