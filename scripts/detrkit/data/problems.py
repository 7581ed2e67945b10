"""What is wrong with a data set: one :class:`Problem` per bad record, and the error that lists them all.

Readers report problems by image id (``"-"`` for the source file itself); ``on_error="raise"`` turns them into one
:class:`InvalidDatasetError` naming every problem found, not just the first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["InvalidDatasetError", "Problem"]


@dataclass(frozen=True)
class Problem:
    image_id: Any
    message: str

    def __str__(self) -> str:
        return self.message if self.image_id == "-" else f"image {self.image_id}: {self.message}"  # "-": the file


class InvalidDatasetError(ValueError):
    """Raised with ``on_error="raise"``; ``problems`` lists every bad record found, not just the first."""

    def __init__(self, source: str, problems: list[Problem], num_entries: int):
        self.source, self.problems, self.num_entries = source, problems, num_entries
        shown = "\n".join(f"  - {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(
            f"{len(problems)} problem(s) in {source} ({num_entries} images):\n{shown}{more}\n"
            f"Fix the data, or pass on_error='skip' to leave these images out."
        )

    def __reduce__(self):  # pickled whole (from the process that builds the cache), not by its message
        return type(self), (self.source, self.problems, self.num_entries)
