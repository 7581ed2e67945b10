"""What is wrong with a data set: one :class:`Problem` per bad record, and the error that lists them all.

Readers report problems by image id (``"-"`` for the source file itself); ``on_error="raise"`` turns them into one
:class:`InvalidDatasetError` naming every problem found, not just the first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["BoxReport", "InvalidDatasetError", "Problem"]


@dataclass(frozen=True)
class Problem:
    image_id: Any
    message: str

    def __str__(self) -> str:
        return self.message if self.image_id == "-" else f"image {self.image_id}: {self.message}"  # "-": the file


@dataclass
class BoxReport:
    """What the box rule (``detrkit.processing.box_rule``) did to the boxes of the images kept: how many crossed
    the image edge and were clipped to it, and each box dropped (zero size, or entirely outside the image).
    ``detrkit data check`` and training print it with :meth:`lines`, so both say the same thing."""

    clipped: int = 0
    clipped_images: int = 0
    dropped: list[Problem] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.clipped or self.dropped)

    def lines(self, shown: int = 20) -> list[str]:
        """The report: two counts, then up to ``shown`` dropped boxes by image and annotation."""
        lines = [f"boxes clipped to the image edge: {self.clipped} (in {self.clipped_images} images)",
                 f"boxes dropped (zero size or outside the image): {len(self.dropped)}"]
        lines += [f"  - {p}" for p in self.dropped[:shown]]
        if shown and len(self.dropped) > shown:
            lines.append(f"  ... and {len(self.dropped) - shown} more")
        return lines

    def to_json(self) -> dict:
        return {"clipped": self.clipped, "clipped_images": self.clipped_images,
                "dropped": [[p.image_id, p.message] for p in self.dropped]}

    @classmethod
    def from_json(cls, value: dict) -> "BoxReport":
        return cls(value["clipped"], value["clipped_images"], [Problem(i, m) for i, m in value["dropped"]])


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
