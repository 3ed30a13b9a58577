"""Tables, training-loss curves and records of ``sgdlab bench smallbatch`` (see
:mod:`sgdlab.experiments.smallbatch` for the protocol): scoring reads only what the runs recorded.

>>> _mean_std([90.0, 92.0])
'91.00 ± 1.41'
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sgdlab.checkpoint import atomic_write_bytes
from sgdlab.experiments import smallbatch_stats
from sgdlab.experiments.smallbatch_plan import (
    ABLATIONS,
    AUTHORS_ABLATIONS,
    BASELINE_OF,
    VARIANTS,
    Record,
    SmallBatchPlan,
)
from sgdlab.optim import PROX_DEFAULTS
from sgdlab.run.store import ResultStore


def summarize(records: Sequence[Record]) -> list[dict[str, Any]]:
    r"""One row per (workload, batch, variant) of the final and ablation runs: test accuracy
    mean ± sample std (percent), its gap to the baseline ± the gap's standard error
    :math:`\sqrt{s_1^2/n_1 + s_2^2/n_2}`, training loss, ms per step."""
    groups: dict[tuple[str, int, str], list[Record]] = defaultdict(list)
    for r in records:
        if r.role != "tune":
            groups[(r.workload, r.batch_size, r.variant)].append(r)
    means: dict[tuple[str, int, str], tuple[float, float]] = {}  # mean, its squared error
    rows = []
    labels = dict.fromkeys((*ABLATIONS, *AUTHORS_ABLATIONS))  # the union, in order
    order = list(VARIANTS) + [f"{v} {a}" for v in BASELINE_OF for a in labels]
    for (name, b, variant), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.index(kv[0][2]))
    ):
        accs = [100 * r.accuracy for r in rs if r.accuracy is not None]
        mean = statistics.fmean(accs) if accs else math.nan
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        means[(name, b, variant)] = (mean, std**2 / max(1, len(accs)))
        base = BASELINE_OF.get(variant.split(" ")[0])
        base_mean, base_err2 = means.get((name, b, base or ""), (math.nan, math.nan))
        gap = f"{mean - base_mean:+.2f} ± {math.sqrt(base_err2 + std**2 / max(1, len(accs))):.2f}"
        opts = rs[0].options
        losses = [r.train_loss for r in rs if r.train_loss is not None]
        times = [r.ms_per_step for r in rs if r.ms_per_step is not None]
        rows.append(
            {
                "workload": name,
                "batch": b,
                "variant": variant,
                "lr": rs[0].lr,
                "lam": opts.get("lam", PROX_DEFAULTS["lam"]) if "lam" in opts or (
                    "prox" in variant and "mean lr" not in variant) else "",
                "runs": f"{len(accs)}/{len(rs)}",
                "test acc %": _mean_std(accs),
                "mean ± se": smallbatch_stats.mean_se(accs),
                "mean": mean,
                "std": std,
                "vs baseline": gap if base else "",
                "train loss": statistics.fmean(losses) if losses else math.nan,
                "ms/step": statistics.median(times) if times else math.nan,
            }
        )
    return rows


def write_outputs(
    plan: SmallBatchPlan,
    tag: str,
    records: Sequence[Record],
    chosen: dict[str, dict[str, Any]],
    db: Path,
    out: Path,
    console: Any,
) -> dict[str, Any]:
    """Write ``smallbatch.md``, ``smallbatch.json`` and the curves to ``out``; print the table;
    return the JSON-ready summary
    :func:`~sgdlab.experiments.smallbatch.run_smallbatch` hands back."""
    rows = summarize(records)
    with ResultStore(db) as store:
        curves = loss_curves(store, records, plan.bins_per_epoch)
        accuracy = smallbatch_stats.accuracy_curves(store, records)
    plots = smallbatch_stats.plot_panels(
        curves, plan.workloads, plan.batch_sizes, out, stem="smallbatch",
        ylabel="training loss (minibatch)", yscale="log")
    paired: list[dict[str, Any]] = []
    text = markdown(rows, plan, tag, records)
    if plan.protocol == "authors":
        plots += smallbatch_stats.plot_accuracy(accuracy, plan.workloads, plan.batch_sizes, out)
        paired = smallbatch_stats.paired_rows(records)
        text += smallbatch_stats.markdown(paired)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "smallbatch.md"
    atomic_write_bytes(md, text.encode())
    blob = {
        "suite": tag,
        "plan": asdict(plan),
        "chosen": chosen,
        "rows": rows,
        "paired": paired,
        "records": [asdict(r) for r in records],
    }
    atomic_write_bytes(out / "smallbatch.json", json.dumps(blob, indent=1, default=str).encode())
    _print_table(rows, console)
    console.print(f"table: {md}  plots: {', '.join(str(p) for p in plots)}")
    return {
        "suite": tag,
        "rows": rows,
        "paired": paired,
        "chosen": chosen,
        "plots": [str(p) for p in plots],
        "markdown": str(md),
        "records": str(out / "smallbatch.json"),
    }


def loss_curves(
    store: ResultStore, records: Sequence[Record], bins_per_epoch: int
) -> dict[tuple[str, int, str], tuple[list[float], list[float]]]:
    """(workload, batch, variant) -> (epochs, mean minibatch loss): each run's per-step losses
    averaged in bins of ``1/bins_per_epoch`` epoch, then averaged over the seeds."""
    per_run: dict[tuple[str, int, str], list[dict[int, float]]] = defaultdict(list)
    width_of: dict[tuple[str, int, str], float] = {}
    for r in records:
        if r.role == "tune" or r.run_id is None:
            continue
        width = max(1, r.steps_per_epoch // bins_per_epoch)
        losses: dict[int, list[float]] = defaultdict(list)
        for step, _, loss in store.samples(r.run_id):
            losses[(step - 1) // width].append(loss)
        key = (r.workload, r.batch_size, r.variant)
        per_run[key].append({k: statistics.fmean(v) for k, v in losses.items()})
        width_of[key] = width / r.steps_per_epoch
    curves = {}
    for key, runs in per_run.items():
        bins = sorted(set.intersection(*(set(run) for run in runs)))
        xs = [(k + 0.5) * width_of[key] for k in bins]
        ys = [statistics.fmean(run[k] for run in runs) for k in bins]
        curves[key] = (xs, ys)
    return curves


_COLUMNS = (
    "workload",
    "batch",
    "variant",
    "lr",
    "lam",
    "runs",
    "test acc %",
    "mean ± se",
    "vs baseline",
    "train loss",
    "ms/step",
)


def markdown(
    rows: Sequence[dict[str, Any]],
    plan: SmallBatchPlan,
    tag: str,
    records: Sequence[Record] = (),
) -> str:
    """The results table as Markdown, with the scale it ran at, then every tuning trial."""
    scored = f"a seeded subset of {plan.test} test samples" if plan.test else "the full test set"
    lines = [
        f"Suite `{tag}`: {plan.subset} training samples (seeded subset), {plan.epochs} epochs, "
        f"tuned on seed 0 against {plan.validation} validation samples, then seeds "
        f"1..{plan.seeds} on {scored}; lams tried {list(plan.lams)}; protocol "
        f"{plan.protocol}. `test acc %` is mean ± sample std, `mean ± se` its standard error.",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(row[c]) for c in _COLUMNS) + " |" for row in rows]
    trials: dict[tuple[str, int, str], list[str]] = defaultdict(list)
    for r in records:
        if r.role == "tune":
            acc = "diverged" if r.accuracy is None else f"{100 * r.accuracy:.1f}"
            lam = f" λ={r.options['lam']}" if "lam" in r.options else ""
            trials[(r.workload, r.batch_size, r.variant)].append(f"{r.lr:g}{lam}: {acc}")
    if trials:
        lines += ["", "Tuning trials, seed 0 (learning rate [λ]: validation accuracy %):", ""]
        lines += ["| workload | batch | variant | trials |", "|---|---|---|---|"]
        lines += [f"| {w} | {b} | {v} | {'; '.join(t)} |" for (w, b, v), t in trials.items()]
    return "\n".join(lines) + "\n"


def _print_table(rows: Sequence[dict[str, Any]], console: Any) -> None:
    from rich.table import Table

    t = Table(title="smallbatch: test accuracy (mean ± std over seeds)")
    for c in _COLUMNS:
        t.add_column(c)
    for row in rows:
        t.add_row(*(_cell(row[c]) for c in _COLUMNS))
    console.print(t)


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "diverged"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def rewrite_outputs(records_json: Path, db: Path, quiet: bool = True) -> dict[str, Any]:
    """Redraw the table, curves and records of a finished run from its ``smallbatch.json``
    (and the database its runs are in), into the same folder; nothing is trained."""
    from rich.console import Console

    blob = json.loads(records_json.read_text())
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in blob["plan"].items()
    }
    plan = SmallBatchPlan(**fields)
    records = [Record(**r) for r in blob["records"]]
    console = Console(stderr=True, quiet=quiet)
    return write_outputs(
        plan, blob["suite"], records, blob["chosen"], db, records_json.parent, console
    )
