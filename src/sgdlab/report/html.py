"""The HTML report on disk, and the scored table in the terminal, from what the store recorded."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgdlab.checkpoint import atomic_write_bytes
from sgdlab.report.plots import plot_runs
from sgdlab.report.scoring import GroupScore, score
from sgdlab.report.sections import Section
from sgdlab.report.tables import COLUMNS, cell, console, score_table, section_table
from sgdlab.run.store import ResultStore


def _score_json(s: GroupScore) -> dict[str, Any]:
    return {
        "workload": s.workload,
        "optimizer": s.optimizer,
        "label": s.label,
        "runs": s.runs,
        "final_loss": s.final_loss.median,
        "metric": s.metric,
        "metric_value": s.metric_value.median,
        "time_to_target": s.time_to_target.median if s.reached else None,
        "reached": s.reached,
        "train_seconds": s.train_seconds.median,
        "ms_per_step": s.ms_per_step.median,
    }


def build_report(
    store: ResultStore,
    out: Path,
    suite: str | None = None,
    title: str = "sgdlab report",
    quiet: bool = False,
    sections: Sequence[Section] = (),
) -> dict[str, Any]:
    """Score the finished runs, print the table, draw the plots, write ``out/report.html``."""
    runs = store.runs(suite=suite)
    scores = score(runs)
    if not quiet:
        console.print(score_table(scores))
    images = plot_runs(store, runs, out) if runs else []
    if not quiet:
        for section in sections:
            console.print(section_table(section))
    page = _html(title, scores, images, sections)
    report_path = out / "report.html"
    atomic_write_bytes(report_path, page.encode())
    if not quiet:
        console.print(f"report: {report_path}  plots: {', '.join(str(p) for p in images)}")
    return {
        "report": str(report_path),
        "plots": [str(p) for p in images],
        "runs": len(runs),
        "results": [_score_json(s) for s in scores],
        "sections": [
            {
                "title": sec.title,
                "text": sec.text,
                "rows": sec.rows,
                "images": [str(p) for p in sec.images],
            }
            for sec in sections
        ],
    }


def _section_html(section: Section) -> str:
    columns = list(section.rows[0]) if section.rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(r.get(c, '')))}</td>" for c in columns) + "</tr>"
        for r in section.rows
    )
    table = f"<table><tr>{head}</tr>{body}</table>" if columns else ""
    return (
        f"<h2>{html.escape(section.title)}</h2><p>{html.escape(section.text)}</p>{table}"
        + "".join(_figure(p) for p in section.images)
    )


def _figure(p: Path) -> str:
    return (
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.stem)}'
        "</figcaption></figure>"
    )


def _html(
    title: str, scores: list[GroupScore], images: list[Path], sections: Sequence[Section] = ()
) -> str:
    head = COLUMNS
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(c))}</td>"
            for c in (
                s.workload,
                s.label,
                s.runs,
                s.final_loss,
                s.metric_value,
                f"{s.time_to_target} ({s.reached}/{s.runs})",
                s.train_seconds,
                s.ms_per_step,
            )
        )
        + "</tr>"
        for s in scores
    )
    figs = "".join(_figure(p) for p in images) + "".join(_section_html(s) for s in sections)
    data = html.escape(json.dumps([_score_json(s) for s in scores]))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:14px}}
th{{background:#f3f3f3}}img{{max-width:100%}}figure{{margin:1em 0}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Medians over seeds with [min, max]; training seconds exclude evaluation. Time to target is
the training time at the first evaluation whose metric reached the workload's target.</p>
<table><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>{rows}</table>
{figs}
<script type="application/json" id="results">{data}</script>
</body></html>
"""
