"""What a method's showcase adds to a suite's report: a :class:`Section` (title, text, table,
figures); and what it is given, a :class:`ShowcaseContext`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console


@dataclass
class Section:
    """A showcase's part of a suite's report: a title, a line of text, a table, figures."""

    title: str
    text: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


@dataclass
class ShowcaseContext:
    """What a showcase gets: where to record and draw, and whether to keep quiet."""

    db: Path
    out: Path
    tag: str
    quiet: bool
    console: Console
