"""The typed configuration of one training run, and its validation."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sgdlab.bench.nonfinite import POLICIES
from sgdlab.bench.store import DEFAULT_DB
from sgdlab.errors import ConfigError, StoreError

SCHEDULES = ("constant", "diminishing")
_COUNTS = ("eval_every", "log_every", "checkpoint_every", "threads")  # integers >= 0

# Fields that change nothing about the trajectory: left out of the run's key, so a resumed run
# may, say, write its checkpoints at another interval.
_NOT_IN_KEY = (
    "out",
    "resume",
    "db",
    "progress",
    "checkpoint_every",
    "suite",
    "eval_every",
    "log_every",
    # What a NaN does: a run that never meets one is the same under either policy, and a run
    # stopped by a NaN may be resumed with ``skip`` to step over the batch that caused it.
    "on_nonfinite",
)


def check_output_paths(db: Path | None = None, out: Path | None = None) -> None:
    """Refuse, creating nothing, a ``--db`` or ``--out`` that cannot be written: a suite
    checks them before its first run, not after hours of runs."""
    for path, what, folder in ((db, "--db", False), (out, "--out", True)):
        if path is None:
            continue
        path = Path(path)
        if path.exists() and path.is_dir() != folder:
            kind = "a folder" if path.is_dir() else "a file"
            raise ConfigError(f"invalid {what} {path}: it is {kind}")
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"invalid {what} {path}: {parent} is a file, not a folder")
    if db is not None and Path(db).is_file():  # read only: an existing file must be a database
        try:
            with contextlib.closing(sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro",
                                                    uri=True)) as conn:
                conn.execute("PRAGMA schema_version")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open results database {db}: {exc}") from None


@dataclass
class TrainConfig:
    """One training run. ``optimizer_options`` and ``workload_options`` come from ``--set``.

    ``on_nonfinite`` is what a NaN or infinite loss or gradient does: ``"stop"`` the run (the
    default) or ``"skip"`` the step; see :mod:`sgdlab.bench.nonfinite`.
    """

    workload: str
    optimizer: str = "sgd"
    lr: float = 0.1
    steps: int = 1000
    batch_size: int = 64
    seed: int = 0
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    workload_options: dict[str, Any] = field(default_factory=dict)
    schedule: str = "constant"
    mu: float | None = None
    L: float | None = None
    alpha: float = 2.0
    eval_every: int = 0
    log_every: int = 0
    checkpoint_every: int = 0
    out: Path | None = None
    resume: bool = False
    db: Path = DEFAULT_DB
    device: str = "cpu"
    threads: int = 0
    suite: str = ""
    progress: bool | None = None
    on_nonfinite: str = "stop"

    def validate(self) -> None:
        for name in ("steps", "batch_size", "seed", *_COUNTS):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"invalid {name.replace('_', '-')}: {value!r} (an integer)")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"invalid {name.replace('_', '-')}: {getattr(self, name)} (must be >= 1)"
                )
        for name in _COUNTS:
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"invalid {name.replace('_', '-')}: {getattr(self, name)} (must be >= 0)"
                )
        if isinstance(self.lr, bool) or not math.isfinite(self.lr) or self.lr < 0:
            raise ConfigError(f"invalid lr: {self.lr}")
        if "lr" in self.optimizer_options:
            raise ConfigError("give the learning rate with --lr, not --set lr=...")
        if self.seed < 0:
            raise ConfigError(f"invalid seed: {self.seed} (must be >= 0)")
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"invalid schedule {self.schedule!r}; choose {' or '.join(SCHEDULES)}"
            )
        if self.schedule == "constant" and (self.mu is not None or self.L is not None):
            raise ConfigError("--mu and --L only apply with --schedule diminishing")
        if self.on_nonfinite not in POLICIES:
            raise ConfigError(
                f"invalid on-nonfinite {self.on_nonfinite!r}; choose {' or '.join(POLICIES)}"
            )
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"invalid device {self.device!r}; use cpu or cuda[:N]")

    def key(self) -> str:
        """A short hash of everything that determines the trajectory."""
        d = {k: v for k, v in asdict(self).items() if k not in _NOT_IN_KEY}
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def out_dir(self) -> Path:
        """``--out``, or ``sgdlab-out/<workload>-<optimizer>-s<seed>-<key>``."""
        if self.out is not None:
            return Path(self.out)
        safe = self.optimizer.replace(":", "_")
        return Path("sgdlab-out") / f"{self.workload}-{safe}-s{self.seed}-{self.key()}"

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
