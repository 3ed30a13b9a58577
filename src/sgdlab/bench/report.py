"""Tables in the terminal and an HTML report on disk, from what the store recorded."""

from __future__ import annotations

import base64
import html
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sgdlab.bench.plots import plot_runs
from sgdlab.bench.scoring import GroupScore, score
from sgdlab.bench.store import ResultStore
from sgdlab.checkpoint import atomic_write_bytes

# Off a terminal rich assumes 80 columns, too narrow for the results table.
_console = Console(stderr=False, width=None if sys.stdout.isatty() else 150)


_COLUMNS = (
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
    _console.print(t)
    _console.print(f"logs and checkpoints: {result.out_dir}")


def print_mapping(title: str, values: dict[str, Any]) -> None:
    """A two-column table of names and values."""
    t = Table(title=title)
    t.add_column("")
    t.add_column("value")
    for k, v in values.items():
        t.add_row(str(k), f"{v:.6g}" if isinstance(v, float) else str(v))
    _console.print(t)


def catalogue() -> dict[str, Any]:
    from sgdlab.optim.registry import _REGISTRY, peer_names
    from sgdlab.workloads import workload_names, workload_options, workload_spec

    workloads = []
    for name in workload_names():
        spec = workload_spec(name)
        workloads.append(
            {
                "name": name,
                "description": spec.description,
                "data": spec.dataset,
                "metric": spec.metric,
                "target": spec.target,
                "convex": spec.convex,
                "options": workload_options(name),
            }
        )
    optimizers = [
        {"name": s.name, "family": s.family, "description": s.description}
        for s in sorted(_REGISTRY.values(), key=lambda s: (s.family != "sgdlab", s.name))
    ]
    return {"workloads": workloads, "optimizers": optimizers, "peers": peer_names()}


def print_catalogue(cat: dict[str, Any]) -> None:
    t = Table(title="workloads")
    for col in ("name", "data", "metric ≥ target", "convex", "options", "description"):
        t.add_column(col)
    for w in cat["workloads"]:
        opts = ", ".join(f"{k}={v}" for k, v in w["options"].items())
        t.add_row(
            w["name"],
            w["data"],
            f"{w['metric']} ≥ {w['target']}",
            "yes" if w["convex"] else "",
            opts,
            w["description"],
        )
    _console.print(t)
    t = Table(title="optimizers")
    for col in ("name", "family", "description"):
        t.add_column(col)
    for o in cat["optimizers"]:
        t.add_row(o["name"], o["family"], o["description"])
    _console.print(t)
    if cat["peers"]:
        _console.print(
            f"and {len(cat['peers'])} peers from pytorch_optimizer as peer:<name>, "
            f"e.g. {', '.join(cat['peers'][:6])}, …"
        )
    else:
        _console.print("peers: install the extra (pip install 'sgdlab[peers]') for peer:<name>")


def _score_table(scores: list[GroupScore]) -> Table:
    t = Table(title="results (median [min, max] over seeds)")
    for col in _COLUMNS:
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
    sections: Sequence[Any] = (),
) -> dict[str, Any]:
    """Score the finished runs, print the table, draw the plots, write ``out/report.html``."""
    runs = store.runs(suite=suite)
    scores = score(runs)
    if not quiet:
        _console.print(_score_table(scores))
    images = plot_runs(store, runs, out) if runs else []
    if not quiet:
        for section in sections:
            _console.print(_section_table(section))
    page = _html(title, scores, images, sections)
    report_path = out / "report.html"
    atomic_write_bytes(report_path, page.encode())
    if not quiet:
        _console.print(f"report: {report_path}  plots: {', '.join(str(p) for p in images)}")
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


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _section_table(section: Any) -> Table:
    t = Table(title=section.title, caption=section.text or None)
    columns = list(section.rows[0]) if section.rows else []
    for col in columns:
        t.add_column(col)
    for row in section.rows:
        t.add_row(*(_cell(row.get(c, "")) for c in columns))
    return t


def _section_html(section: Any) -> str:
    columns = list(section.rows[0]) if section.rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c, '')))}</td>" for c in columns) + "</tr>"
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
    title: str, scores: list[GroupScore], images: list[Path], sections: Sequence[Any] = ()
) -> str:
    head = _COLUMNS
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
