"""Tables in the terminal: a run's result, a scored suite, a showcase's section, a mapping."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from sgdlab.report.scoring import GroupScore

# Off a terminal rich assumes 80 columns, too narrow for the results table.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 150)


COLUMNS = (
    "workload",
    "optimizer",
    "runs",
    "final loss",
    "metric",
    "time to target s",
    "train s",
    "ms/step",
)


def print_result(result: Any) -> None:
    t = Table(title=f"run {result.run_id}: {result.workload} · {result.optimizer}")
    t.add_column("steps")
    t.add_column("final loss")
    t.add_column(result.metric)
    t.add_column("train s")
    t.add_column("time to target")
    ttt = (
        "not reached"
        if result.time_to_target is None
        else (f"{result.time_to_target:.2f} s (step {result.step_to_target})")
    )
    t.add_row(
        str(result.steps),
        f"{result.final_loss:.5g}",
        f"{result.metric_value:.4f}",
        f"{result.train_seconds:.2f}",
        ttt,
    )
    console.print(t)
    console.print(f"logs and checkpoints: {result.out_dir}")


def print_mapping(title: str, values: dict[str, Any]) -> None:
    """A two-column table of names and values."""
    t = Table(title=title)
    t.add_column("")
    t.add_column("value")
    for k, v in values.items():
        t.add_row(str(k), f"{v:.6g}" if isinstance(v, float) else str(v))
    console.print(t)


def score_table(scores: list[GroupScore]) -> Table:
    t = Table(title="results (median [min, max] over seeds)")
    for col in COLUMNS:
        t.add_column(col)
    for s in scores:
        t.add_row(
            s.workload,
            s.label,
            str(s.runs),
            str(s.final_loss),
            str(s.metric_value),
            f"{s.time_to_target} ({s.reached}/{s.runs})",
            str(s.train_seconds),
            str(s.ms_per_step),
        )
    return t


def cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def section_table(section: Any) -> Table:
    t = Table(title=section.title, caption=section.text or None)
    columns = list(section.rows[0]) if section.rows else []
    for col in columns:
        t.add_column(col)
    for row in section.rows:
        t.add_row(*(cell(row.get(c, "")) for c in columns))
    return t
