"""Progress of training epochs and evaluations: tqdm's bar on a terminal (or a notebook's widget), one line per
loop where the output is a file (CI, nohup, a cluster job, `> log`), which a redrawn bar would fill with carriage
returns.

`progress(iterable, desc, ...)` takes the tqdm arguments the callers use and returns an object with tqdm's
`set_postfix` / `close`; the line, written when the loop closes, carries what the bar shows:
`epoch 3/12: 40/40 batches in 00:12 (3.31 batch/s), avg=0.611, loss=0.512, lr=8.0e-04`.
"""
from __future__ import annotations

import sys
from typing import Iterable

from tqdm.auto import tqdm as auto_tqdm


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def in_notebook() -> bool:
    """tqdm.auto chose Jupyter's widget: its output is no terminal, yet the widget redraws in place."""
    return any(cls.__module__ == "tqdm.notebook" for cls in auto_tqdm.__mro__)


def progress(iterable: Iterable, desc: str, *, total: int | None = None, initial: int = 0, disable: bool = False,
             leave: bool = True, file=None):
    """tqdm(iterable, ...) where `file` (default: stderr) is a terminal or in a notebook; elsewhere a LineProgress
    (which writes its line even for leave=False: one line per evaluation)."""
    stream = sys.stderr if file is None else file
    bar = auto_tqdm if is_terminal(stream) or in_notebook() else LineProgress
    return bar(iterable, desc=desc, total=total, initial=initial, disable=disable, leave=leave, file=stream,
               dynamic_ncols=True)


class LineProgress(auto_tqdm):
    """tqdm that draws nothing while it runs and writes one line when it closes (or its iterable is exhausted).

    The same class as the bar underneath, so it iterates the loader exactly as the bar does: tqdm.auto opens an
    iterator of its own, which draws a DataLoader's base seed, and a run's data order must not depend on whether its
    output is a terminal."""

    def display(self, msg=None, pos=None):
        return False  # nothing drawn, so close has nothing to clear

    def close(self):
        if self.disable:
            return
        line = self.line()
        self.leave = False  # tqdm's close then writes nothing (no final bar, no newline)
        super().close()
        try:
            self.fp.write(line + "\n")
            self.fp.flush()
        except ValueError:  # the stream was closed meanwhile
            pass

    def line(self) -> str:
        info = self.format_dict
        seconds, done = info["elapsed"], self.n - self.initial
        rate = done / seconds if seconds > 0 else 0.0
        speed = f"{rate:.2f} batch/s" if rate >= 1 or not done else f"{1 / rate:.2f} s/batch"
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        postfix = f", {info['postfix']}" if info.get("postfix") else ""
        return f"{self.desc}: {count} batches in {self.format_interval(seconds)} ({speed}){postfix}"
