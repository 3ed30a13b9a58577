"""``sgdlab report``: tabulate, plot and write the HTML report of a results database."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import typer

from sgdlab.cli import options
from sgdlab.cli.options import emit_json
from sgdlab.run.config import option
from sgdlab.run.store import DEFAULT_DB


@dataclass(kw_only=True)
class ReportConfig:
    """``sgdlab report``'s knobs: which database, which of its runs, and where the report goes."""

    db: Path = field(default=DEFAULT_DB, metadata=option("Results database (SQLite).", "--db"))
    out: Path = field(default=Path("sgdlab-results/report"),
                      metadata=option("Folder for the plots and the HTML report."))
    suite: str | None = field(default=None, metadata=option("Only runs of this suite."))


def report(cfg: ReportConfig, json_: bool) -> None:
    """Tabulate, plot and write an HTML report of the runs in a results database."""
    from sgdlab.report.html import build_report
    from sgdlab.run.store import ResultStore

    with ResultStore(cfg.db, create=False) as store:
        summary = build_report(store, cfg.out, suite=cfg.suite,
                               title=f"sgdlab report: {cfg.db}", quiet=json_)
    if json_:
        emit_json(summary)


def register(app: typer.Typer) -> None:
    options.config_command(app, "report", ReportConfig, report)
