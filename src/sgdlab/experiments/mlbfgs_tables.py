"""Tables of ``sgdlab bench mlbfgs``: rows for JSON, Markdown for the results file, rich for
the terminal. Presentation only: the numbers come from :mod:`sgdlab.experiments.mlbfgs`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sgdlab.report.scoring import Spread

_ROW_KEYS = (
    "workload contender lr batch steps runs diverged reached steps_to_target evals_to_target "
    "samples_to_target time_to_target ms_per_step evals_per_step final_loss accuracy"
).split()
_HEADERS = {  # table columns: row key -> header
    "contender": "contender",
    "lr": "lr",
    "batch": "batch",
    "steps": "steps",
    "reached": "reached",
    "steps_to_target": "steps to target",
    "evals_to_target": "grad evals to target",
    "samples_to_target": "samples to target",
    "time_to_target": "time to target s",
    "ms_per_step": "ms/step",
    "evals_per_step": "evals/step",
    "final_loss": "final objective",
    "accuracy": "accuracy",
}


def display_row(r: dict[str, Any]) -> dict[str, Any]:
    """A row for tables and JSON: spreads as strings, the goals' internals left out."""
    return {k: (str(r[k]) if isinstance(r[k], Spread) else r[k]) for k in _ROW_KEYS}


def cost_row(c: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Spread) else v) for k, v in c.items()}


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _cells(r: dict[str, Any]) -> list[str]:
    return [f"{r['reached']}/{r['runs']}" if k == "reached" else _fmt(r[k]) for k in _HEADERS]


def _goal_line(g: dict[str, Any]) -> str:
    met = {True: "met", False: "MISSED"}
    return (
        f"goals: steps {met[g['steps_goal_met']]} (mL-BFGS {_fmt(g['mlbfgs_steps'])} vs best "
        f"baseline {_fmt(g['best_baseline_steps'])}); wall-clock {met[g['wall_goal_met']]} "
        f"(mL-BFGS {_fmt(g['mlbfgs_seconds'])} s vs {g['best_baseline']} "
        f"{_fmt(g['best_baseline_seconds'])} s, ratio {_fmt(g['time_ratio'])})"
    )


def _cost_line(c: dict[str, Any]) -> str:
    return (
        f"| {c['workload']} | {c['batch']} | {c['sgd_momentum_ms']} | {c['mlbfgs_ms']} | "
        f"{c['ratio']} | {'met' if c['goal_met'] else 'MISSED'} |"
    )


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary's tables in Markdown, for ``benchmarks/results/mlbfgs.md``."""
    lines = [f"suite `{summary['suite']}`, {summary['compute_seconds']:.0f} s of compute", ""]
    for w in summary["config"]["workloads"]:
        target = summary["targets"][w]
        lines += [f"### {w} (target accuracy {target})", ""]
        lines.append("| " + " | ".join(_HEADERS.values()) + " |")
        lines.append("|" + "---|" * len(_HEADERS))
        rows = [r for r in summary["rows"] if r["workload"] == w]
        lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
        lines += ["", _goal_line(summary["goals"][w]), ""]
    if summary["step_cost"]:
        lines += ["### cost per step (history 10, T = 10), interleaved", ""]
        lines.append("| workload | batch | SGD-momentum ms | mL-BFGS ms | ratio | goal <= 1.5 |")
        lines.append("|---|---|---|---|---|---|")
        lines += [_cost_line(c) for c in summary["step_cost"]]
    return "\n".join(lines) + "\n"


def print_summary(summary: dict[str, Any]) -> None:
    out = Console(width=max(Console().width, 160))
    for w in summary["config"]["workloads"]:
        t = Table(
            title=f"{w}: median [min, max] over seeds", caption=_goal_line(summary["goals"][w])
        )
        for head in _HEADERS.values():
            t.add_column(head)
        for r in summary["rows"]:
            if r["workload"] == w:
                t.add_row(*_cells(r))
        out.print(t)
    for c in summary["step_cost"]:
        out.print(
            f"cost per step, {c['workload']} (batch {c['batch']}): SGD-momentum "
            f"{c['sgd_momentum_ms']} ms, mL-BFGS {c['mlbfgs_ms']} ms, ratio {c['ratio']}"
        )
    out.print(f"report: {summary['report']}  summary: {Path(summary['report']).parent}/summary.md")
