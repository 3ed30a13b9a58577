"""Scoring reads only what runs recorded: medians and spreads over seeds, time to target.

Nothing here trains or knows a workload's internals (STYLE.md, point 11).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sgdlab.run.store import RunRow


@dataclass(frozen=True)
class Spread:
    """Median with the minimum and maximum of a sample (``n`` values)."""

    median: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if self.n == 0:
            return "–"
        if self.n == 1 or self.low == self.high:
            return f"{self.median:.4g}"
        return f"{self.median:.4g} [{self.low:.3g}, {self.high:.3g}]"


def spread(values: Iterable[float | None]) -> Spread:
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return Spread(float("nan"), float("nan"), float("nan"), 0)
    return Spread(statistics.median(xs), min(xs), max(xs), len(xs))


@dataclass(frozen=True)
class GroupScore:
    """The runs of one (workload, optimizer, label) over their seeds."""

    workload: str
    optimizer: str
    label: str
    runs: int
    final_loss: Spread
    metric: str
    metric_value: Spread
    train_seconds: Spread
    time_to_target: Spread
    reached: int
    ms_per_step: Spread


def label_of(run: RunRow) -> str:
    """A run's optimizer with its distinguishing settings, e.g. ``sgd lr=0.1 momentum=0.9``."""
    cfg = run.config
    parts = [run.optimizer, f"lr={cfg.get('lr')}"]
    parts += [f"{k}={v}" for k, v in sorted((cfg.get("optimizer_options") or {}).items())]
    if cfg.get("schedule", "constant") != "constant":
        parts.append(str(cfg["schedule"]))
    return " ".join(parts)


def score(runs: Sequence[RunRow]) -> list[GroupScore]:
    groups: dict[tuple[str, str, str], list[RunRow]] = defaultdict(list)
    for r in runs:
        groups[(r.workload, r.optimizer, label_of(r))].append(r)
    out = []
    for (workload, optimizer, label), rs in sorted(groups.items()):
        out.append(
            GroupScore(
                workload=workload,
                optimizer=optimizer,
                label=label,
                runs=len(rs),
                final_loss=spread(r.final_loss for r in rs),
                metric=rs[0].metric or "metric",
                metric_value=spread(r.metric_value for r in rs),
                train_seconds=spread(r.train_seconds for r in rs),
                time_to_target=spread(r.time_to_target for r in rs),
                reached=sum(r.time_to_target is not None for r in rs),
                ms_per_step=spread(
                    1000 * r.train_seconds / r.steps_done
                    for r in rs
                    if r.train_seconds is not None and r.steps_done
                ),
            )
        )
    return out
