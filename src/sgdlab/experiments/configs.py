"""The knobs of ``sgdlab bench quick | overlap | hogwild | biased-sgd``, one dataclass a suite:
each field's :func:`~sgdlab.run.config.option` metadata is its command-line option (the
smallbatch and mL-BFGS suites keep theirs beside their plans). Like every config module, this
one loads no torch: the CLI reads it to build ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sgdlab.experiments.smallbatch_plan import parse_list
from sgdlab.run.config import option
from sgdlab.run.store import DEFAULT_DB

_RESULTS = Path("sgdlab-results")


@dataclass(kw_only=True)
class QuickBenchConfig:
    """``sgdlab bench quick``: :func:`sgdlab.experiments.suites.run_suite` of ``"quick"``."""

    db: Path = field(default=DEFAULT_DB, metadata=option("Results database (SQLite).", "--db"))
    out: Path = field(default=_RESULTS / "quick",
                      metadata=option("Folder for the plots and the HTML report."))


@dataclass(kw_only=True)
class OverlapBenchConfig:
    """``sgdlab bench overlap``: :func:`sgdlab.experiments.overlap.overlap_benchmark`."""

    out: Path = field(default=_RESULTS / "overlap",
                      metadata=option("Folder for the figures and the table."))
    grid: str = field(default="small", metadata=option("small (about 10 minutes here) or full."))
    protocol: str = field(default="", metadata=option(
        "paper, paper-scaled or paper-scaled2: W=4 on a real testbed (root), not --grid."))
    seeds: tuple[int, ...] = field(default=(), metadata=option(
        "Comma-separated seeds of --protocol to run, merged into --out's earlier results "
        "('' for all of the protocol's).", cli_type=str, cli_default="",
        parse=lambda text: parse_list(text, int, "seeds") if text.strip() else ()))


@dataclass(kw_only=True)
class HogwildBenchConfig:
    """``sgdlab bench hogwild``: :func:`sgdlab.experiments.hogwild.hogwild_bench`."""

    out: Path = field(default=_RESULTS / "hogwild",
                      metadata=option("Folder for the plots and hogwild.json."))
    seeds: int = field(default=3, metadata=option("Seeds per variant."))


@dataclass(kw_only=True)
class BiasedSgdBenchConfig:
    """``sgdlab bench biased-sgd``: biased SGD run for real on one problem, beside the bound of
    the LMI (:func:`sgdlab.experiments.biased_practice.practice_report`)."""

    workload: str = field(default="logreg-breast-cancer", metadata=option(
        "A dense logreg-* workload, or 'quadratic' (synthetic)."))
    l2: float | None = field(default=None, metadata=option("lambda of the workload (its default)."))
    rows: int | None = field(default=None, metadata=option("A seeded subset of the training rows."))
    case: str = field(default="smooth-convex", metadata=option("smooth or smooth-convex."))
    delta: float = field(default=0.0, metadata=option("Relative gradient error."))
    c: float | None = field(default=None, metadata=option(
        "Absolute error (default: floor = ||x*||^2/10).", "--c"))
    steps: int = field(default=4000, metadata=option("SGD steps."))
    seeds: int = field(default=8, metadata=option("Independent runs per variant."))
    alpha: float | None = field(default=None, metadata=option(
        "Constant step (default: the schedule's first)."))
    plot: Path = field(default=_RESULTS / "biased-sgd" / "biased-practice.png",
                       metadata=option("Write the figure here."))
