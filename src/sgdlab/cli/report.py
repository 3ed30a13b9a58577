"""``sgdlab report``: tabulate, plot and write the HTML report of a results database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sgdlab.cli.options import DbOption, JsonOption, emit_json
from sgdlab.run.store import DEFAULT_DB


def report(
    db: DbOption = DEFAULT_DB,
    out: Annotated[Path, typer.Option(help="Folder for the plots and the HTML report.")] = Path(
        "sgdlab-results/report"
    ),
    suite: Annotated[str | None, typer.Option(help="Only runs of this suite.")] = None,
    json_: JsonOption = False,
) -> None:
    """Tabulate, plot and write an HTML report of the runs in a results database."""
    from sgdlab.report.html import build_report
    from sgdlab.run.store import ResultStore

    with ResultStore(db, create=False) as store:
        summary = build_report(store, out, suite=suite, title=f"sgdlab report: {db}", quiet=json_)
    if json_:
        emit_json(summary)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
