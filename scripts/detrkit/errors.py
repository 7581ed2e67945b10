"""A user's mistake, as detrkit reports it: one clear line, never a traceback.

A wrong path, a broken annotation file or model folder, an impossible option: the code that finds the problem
raises an exception whose message names it (ValueError, OSError, KeyError and their subclasses, which is what
the libraries underneath raise for bad input too). The command line (detrkit.cli.runner) prints `message_of`
those as `detrkit CMD: error: ...`; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

USER_ERRORS = (ValueError, OSError, KeyError, ModuleNotFoundError)  # a missing optional package too


class UsageError(ValueError):
    """A user's mistake found by detrkit itself (the message says what to do)."""


def message_of(error: BaseException) -> str:
    """The error's message on one line (a KeyError's without the quotes repr adds)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    text = str(text).strip() or type(error).__name__
    return " ".join(text.split()) if len(text) < 2000 else text.splitlines()[0]
