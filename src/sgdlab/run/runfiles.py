"""The files of one run under its ``--out`` folder: which folder, and its event log.

A run lives in ``<out>/run-NNNN``: ``checkpoint.pt`` while it runs (if asked for),
``events.jsonl`` (one JSON object per line), and ``model.pt`` and ``result.json`` once it has
finished. A folder with a checkpoint and no result is a run to resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from sgdlab.errors import CheckpointError

CHECKPOINT = "checkpoint.pt"
EVENTS = "events.jsonl"
MODEL = "model.pt"
RESULT = "result.json"


class EventLog:
    """Append-only JSONL; its byte length is saved with each checkpoint."""

    def __init__(self, path: Path, truncate_to: int | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_to is not None and path.exists():
            with path.open("r+b") as f:
                f.truncate(truncate_to)
        self._f: IO[str] = path.open("a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        self._f.write(json.dumps({"event": event, **fields}) + "\n")

    def offset(self) -> int:
        self._f.flush()
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


def new_run_dir(base: Path) -> Path:
    """A fresh ``base/run-NNNN``: earlier runs' files are never touched."""
    base.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[4:]) for p in base.glob("run-*") if p.name[4:].isdigit()]
    number = max(taken, default=0) + 1
    while True:
        path = base / f"run-{number:04d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            number += 1


def resumable_run_dir(base: Path) -> Path:
    """The newest ``base/run-NNNN`` that has a checkpoint and no result yet."""
    runs = sorted(
        (p for p in base.glob("run-*") if p.name[4:].isdigit()), key=lambda p: int(p.name[4:])
    )
    for path in reversed(runs):
        if (path / CHECKPOINT).exists() and not (path / RESULT).exists():
            return path
    raise CheckpointError(f"nothing to resume under {base}: no unfinished run with a checkpoint")
