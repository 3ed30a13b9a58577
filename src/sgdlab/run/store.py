"""Results in SQLite: one row per run, its evaluations, and samples of its training loss.

Every statement is a constant string with bound parameters (``?``): no value, and no name a
caller passes, is ever formatted into SQL (a test checks every ``execute`` call in ``src/``).
Nothing read from the database is ever executed or unpickled. The default database is
``./sgdlab-results/results.db``.

Tables:
    runs         config (JSON), package versions, machine, status and the final figures
    evaluations  (run_id, step) → train_seconds, train_loss, test_loss, metric_value
    samples      (run_id, step) → train_seconds, minibatch loss (every ``log_every`` steps)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sgdlab.errors import StoreError

DEFAULT_DB = Path("sgdlab-results") / "results.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL,
    suite TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT 'train',
    workload TEXT NOT NULL,
    optimizer TEXT NOT NULL,
    lr REAL,
    batch_size INTEGER,
    steps INTEGER,
    seed INTEGER,
    config TEXT NOT NULL,
    versions TEXT NOT NULL,
    machine TEXT NOT NULL,
    out_dir TEXT,
    steps_done INTEGER,
    final_loss REAL,
    metric TEXT,
    metric_value REAL,
    test_loss REAL,
    train_seconds REAL,
    time_to_target REAL,
    step_to_target INTEGER,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    train_seconds REAL NOT NULL,
    train_loss REAL,
    test_loss REAL,
    metric_value REAL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS samples (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    train_seconds REAL NOT NULL,
    loss REAL,
    PRIMARY KEY (run_id, step)
);
"""

_FINAL_FIELDS = (
    "steps_done",
    "final_loss",
    "metric",
    "metric_value",
    "test_loss",
    "train_seconds",
    "time_to_target",
    "step_to_target",
)
# finish_run sets only the fields it is given: each column takes a flag and a value, and keeps
# its old value when the flag is 0. Built once, from the constant column names above.
_FINISH_SQL = (
    "UPDATE runs SET status = ?, finished = ?, extra = ?, "
    + ", ".join(f"{name} = CASE WHEN ? THEN ? ELSE {name} END" for name in _FINAL_FIELDS)
    + " WHERE id = ?"
)
_RUNS_SQL = (
    "SELECT * FROM runs WHERE (? IS NULL OR suite = ?) AND (? IS NULL OR status = ?) ORDER BY id"
)


@dataclass(frozen=True)
class RunRow:
    """A run as stored; ``config``, ``versions``, ``machine`` and ``extra`` decoded from JSON."""

    id: int
    created: str
    status: str
    suite: str
    kind: str
    workload: str
    optimizer: str
    config: dict[str, Any]
    versions: dict[str, Any]
    machine: dict[str, Any]
    extra: dict[str, Any]
    lr: float | None
    batch_size: int | None
    steps: int | None
    seed: int | None
    steps_done: int | None
    final_loss: float | None
    metric: str | None
    metric_value: float | None
    test_loss: float | None
    train_seconds: float | None
    time_to_target: float | None
    step_to_target: int | None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ResultStore:
    """A results database; created with its tables on first use."""

    def __init__(self, path: Path | str = DEFAULT_DB, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise StoreError(f"no results database at {self.path}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            existing = self.path.is_file() and self.path.stat().st_size > 0
            self._db = sqlite3.connect(self.path, timeout=30.0)
            self._db.execute("PRAGMA foreign_keys = ON")
            # SQLite finds a damaged page only when it reads it, possibly after it has written
            # to the file: check the whole file once, before any write.
            if existing and (bad := self._db.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
                self._db.close()
                raise StoreError(f"results database {self.path} is corrupt: {bad}")
            with self._db:
                self._db.executescript(_SCHEMA)
            missing = _missing_columns(self._db)
            if missing:  # a damaged schema, or another program's database of the same name
                self._db.close()
                raise StoreError(f"results database {self.path} lacks columns {missing}")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open results database {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._db:
                yield self._db
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"results database {self.path}: {exc}") from None

    def start_run(
        self,
        *,
        workload: str,
        optimizer: str,
        config: dict[str, Any],
        versions: dict[str, Any],
        machine: dict[str, Any],
        suite: str = "",
        kind: str = "train",
        out_dir: str | None = None,
    ) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (created, status, suite, kind, workload, optimizer, lr,"
                " batch_size, steps, seed, config, versions, machine, out_dir)"
                " VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    _now(),
                    suite,
                    kind,
                    workload,
                    optimizer,
                    config.get("lr"),
                    config.get("batch_size"),
                    config.get("steps"),
                    config.get("seed"),
                    json.dumps(config, sort_keys=True, default=str),
                    json.dumps(versions),
                    json.dumps(machine),
                    out_dir,
                ),
            )
            return int(cur.lastrowid or 0)

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Around a read: a corrupt database is one StoreError line."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"results database {self.path}: {exc}") from None

    def has_run(self, run_id: int) -> bool:
        with self._reading():
            return bool(self._db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchall())

    def resume_run(self, run_id: int, step: int) -> None:
        """Forget what a killed run recorded after ``step`` and mark it running again."""
        with self._tx() as db:
            db.execute("DELETE FROM evaluations WHERE run_id = ? AND step > ?", (run_id, step))
            db.execute("DELETE FROM samples WHERE run_id = ? AND step > ?", (run_id, step))
            db.execute("UPDATE runs SET status = 'running' WHERE id = ?", (run_id,))

    def add_evaluation(
        self, run_id: int, step: int, train_seconds: float, values: dict[str, float], metric: str
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO evaluations VALUES (?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    step,
                    train_seconds,
                    values.get("train_loss"),
                    values.get("test_loss"),
                    values.get(metric),
                ),
            )

    def add_samples(self, run_id: int, rows: Sequence[tuple[int, float, float]]) -> None:
        if not rows:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?)",
                [(run_id, s, t, v) for s, t, v in rows],
            )

    def finish_run(
        self,
        run_id: int,
        status: str = "finished",
        extra: dict[str, Any] | None = None,
        **final: Any,
    ) -> None:
        unknown = set(final) - set(_FINAL_FIELDS)
        if unknown:
            raise ValueError(f"unknown result fields: {sorted(unknown)}")
        flagged = [x for name in _FINAL_FIELDS for x in (name in final, final.get(name))]
        with self._tx() as db:
            db.execute(_FINISH_SQL, (status, _now(), json.dumps(extra or {}), *flagged, run_id))

    def runs(self, suite: str | None = None, status: str | None = "finished") -> list[RunRow]:
        self._db.row_factory = sqlite3.Row
        try:
            rows = self._db.execute(_RUNS_SQL, (suite, suite, status, status)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"results database {self.path}: {exc}") from None
        finally:
            self._db.row_factory = None
        try:
            return [_row(r) for r in rows]
        except (TypeError, ValueError) as exc:  # a damaged row or schema that SQLite still reads
            raise StoreError(f"results database {self.path}: unreadable run ({exc})") from None

    def evaluations(self, run_id: int) -> list[tuple[int, float, float, float, float]]:
        """(step, train_seconds, train_loss, test_loss, metric_value) rows in step order."""
        with self._reading():
            return self._db.execute(
                "SELECT step, train_seconds, train_loss, test_loss, metric_value FROM evaluations"
                " WHERE run_id = ? ORDER BY step",
                (run_id,),
            ).fetchall()

    def samples(self, run_id: int) -> list[tuple[int, float, float]]:
        """(step, train_seconds, loss) rows in step order."""
        with self._reading():
            return self._db.execute(
                "SELECT step, train_seconds, loss FROM samples WHERE run_id = ? ORDER BY step",
                (run_id,),
            ).fetchall()


_COLUMNS_SQL = "SELECT name FROM pragma_table_info(?)"


def _missing_columns(db: sqlite3.Connection) -> list[str]:
    """``table.column`` names of :data:`_SCHEMA` that ``db`` lacks."""
    reference = sqlite3.connect(":memory:")
    try:
        reference.executescript(_SCHEMA)
        tables = [r[0] for r in reference.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        missing = []
        for table in tables:
            have = {r[0] for r in db.execute(_COLUMNS_SQL, (table,))}
            missing += [f"{table}.{r[0]}" for r in reference.execute(_COLUMNS_SQL, (table,))
                        if r[0] not in have]
        return missing
    finally:
        reference.close()


def _row(r: sqlite3.Row) -> RunRow:
    d = dict(r)
    for key in ("config", "versions", "machine", "extra"):
        d[key] = json.loads(d[key] or "{}")
    d.pop("finished", None)
    d.pop("out_dir", None)
    return RunRow(**d)
