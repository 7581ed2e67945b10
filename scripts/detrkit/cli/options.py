"""Options several commands share, spelled and explained once, so a name means the same thing everywhere.

`--trust-remote-code [BOOL]` and `--device` are the same flag on every command that loads a model; `add_alias`
keeps an earlier spelling working for one release without showing it in --help.
"""
from __future__ import annotations

import argparse

from .device_option import DEVICE_HELP, check_device_name

TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_bool(text: str) -> bool:
    """`--flag`, `--flag true` and `--flag false` all read (the train flags' spelling)."""
    word = str(text).strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_bool(parser, name: str, default: bool, help: str, dest: str | None = None) -> None:
    shown = "on" if default else "off"
    parser.add_argument(name, dest=dest, nargs="?", const=True, default=default, type=parse_bool, metavar="BOOL",
                        help=f"{help} (default: {shown})")


def add_trust_remote_code(parser) -> None:
    add_bool(parser, "--trust-remote-code", False,
             "allow a Hub model's own Python code to run (only for repositories you trust)")


def add_device(parser, default: str | None = None) -> None:
    """`default` None: cuda when a GPU is visible, else cpu; a command that is as well off on the CPU says so."""
    help = DEVICE_HELP if default is None else DEVICE_HELP.split(" (default")[0] + f" (default: {default})"
    parser.add_argument("--device", default=default, type=_device_name, help=help)


def _device_name(text: str) -> str:
    try:
        return check_device_name(text)
    except ValueError:  # argparse's message already names the option
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}") from None


def add_alias(parser, old: str, dest: str, **kwargs) -> None:
    """An earlier spelling, still read for one release, hidden from --help."""
    parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, **kwargs)
