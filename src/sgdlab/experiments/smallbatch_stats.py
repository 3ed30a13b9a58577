r"""The authors' protocol of ``sgdlab bench smallbatch``: paired tests and accuracy per epoch.

Every final and ablation run of a cell shares its seed's initial weights and batch order with
the same seed of every other contender, so the comparison of two contenders is *paired*: the
difference :math:`d_s = a_s - b_s` of test accuracy per seed :math:`s = 1..n`, its mean
:math:`\bar d`, standard error :math:`\mathrm{se} = s_d/\sqrt n` and the paired t test
(:func:`scipy.stats.ttest_rel`, two-sided, :math:`n - 1` degrees of freedom). A gain counts when
:math:`\bar d \ge 2\,\mathrm{se}`.

>>> row = paired("x", {1: 91.0, 2: 92.0, 3: 93.0}, "y", {1: 90.0, 2: 90.5, 3: 91.5})
>>> row["diff"], round(row["se"], 4), row["n"], row["≥ 2 se"]
(1.3333, 0.1667, 3, True)
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgdlab.experiments.smallbatch_plan import BASELINE_OF, VARIANTS, Record

# Each prox variant against: both baselines, and its two ablations.
RIVALS = ("sgd", "adam", "λ=0", "mean lr")


def paired(name_a: str, acc_a: dict[int, float], name_b: str,
           acc_b: dict[int, float]) -> dict[str, Any]:
    """``name_a`` against ``name_b`` over the seeds both finished (accuracies in percent)."""
    seeds = sorted(set(acc_a) & set(acc_b))
    diffs = [acc_a[s] - acc_b[s] for s in seeds]
    row: dict[str, Any] = {"contender": name_a, "against": name_b, "n": len(diffs),
                           "diff": math.nan, "se": math.nan, "t": math.nan, "p": math.nan,
                           "≥ 2 se": False}
    if len(diffs) < 2:
        return row
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    row.update(diff=round(mean, 4), se=se)
    if se > 0:
        from scipy import stats

        result = stats.ttest_rel([acc_a[s] for s in seeds], [acc_b[s] for s in seeds])
        row.update(t=float(result.statistic), p=float(result.pvalue))
    row["≥ 2 se"] = bool(mean > 0 and mean >= 2 * se)
    return row


def paired_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per (workload, batch, prox variant): a :func:`paired` row against each of
    :data:`RIVALS` that ran, plus the cell's mean ± standard error of every contender."""
    acc: dict[tuple[str, int, str], dict[int, float]] = defaultdict(dict)
    for r in records:
        if r.role != "tune" and r.accuracy is not None:
            acc[(r.workload, r.batch_size, r.variant)][r.seed] = 100 * r.accuracy
    rows = []
    for (w, b, variant) in sorted(acc, key=lambda k: (k[0], k[1], k[2])):
        if variant not in BASELINE_OF:
            continue
        for rival in RIVALS:
            other = rival if rival in VARIANTS else f"{variant} {rival}"
            if (w, b, other) in acc:
                rows.append({"workload": w, "batch": b,
                             **paired(variant, acc[(w, b, variant)], other, acc[(w, b, other)])})
    return rows


def mean_se(values: Sequence[float]) -> str:
    """``"mean ± standard error"`` of accuracies in percent.

    >>> mean_se([90.0, 92.0])
    '91.00 ± 1.00'
    """
    if not values:
        return "diverged"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    se = statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.fmean(values):.2f} ± {se:.2f}"


def accuracy_curves(store: Any, records: Sequence[Record]
                    ) -> dict[tuple[str, int, str], tuple[list[float], list[float]]]:
    """(workload, batch, variant) -> (epochs, mean test accuracy %): the evaluations each final
    or ablation run recorded (every epoch under the authors' protocol), averaged over seeds."""
    per_run: dict[tuple[str, int, str], list[dict[float, float]]] = defaultdict(list)
    for r in records:
        if r.role == "tune" or r.run_id is None:
            continue
        points = {step / r.steps_per_epoch: 100 * metric
                  for step, _, _, _, metric in store.evaluations(r.run_id) if metric is not None}
        per_run[(r.workload, r.batch_size, r.variant)].append(points)
    curves = {}
    for key, runs in per_run.items():
        xs = sorted(set.intersection(*(set(run) for run in runs)))
        curves[key] = (xs, [statistics.fmean(run[x] for run in runs) for x in xs])
    return curves


Curves = dict[tuple[str, int, str], tuple[list[float], list[float]]]


def plot_panels(curves: Curves, workloads: Sequence[str], batch_sizes: Sequence[int], out: Path,
                *, stem: str, ylabel: str, yscale: str = "linear",
                skip_first: bool = False) -> list[Path]:
    """``out/<stem>-<workload>.png``: each variant's curve against epochs, a panel per batch
    size (baselines dashed, ablations dotted or dash-dotted); ``skip_first`` leaves out each
    curve's first point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"sgd": "tab:blue", "adam": "tab:red"}
    paths = []
    for name in workloads:
        fig, axes = plt.subplots(1, len(batch_sizes), figsize=(5 * len(batch_sizes), 4),
                                 squeeze=False)
        for ax, b in zip(axes[0], batch_sizes, strict=True):
            for (w, size, variant), (xs, ys) in sorted(curves.items()):
                if skip_first:
                    xs, ys = xs[1:], ys[1:]
                if w != name or size != b or not xs:
                    continue
                base, _, ablation = variant.partition(" ")
                style = (":" if ablation == "λ=0" else "-." if ablation
                         else "--" if base in BASELINE_OF else "-")
                ax.plot(xs, ys, style, color=colours[VARIANTS[base][0]], label=variant, lw=1.4)
            ax.set(title=f"{name}, batch {b}", xlabel="epoch", ylabel=ylabel, yscale=yscale)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{stem}-{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_accuracy(curves: Curves, workloads: Sequence[str], batch_sizes: Sequence[int],
                  out: Path) -> list[Path]:
    """``out/smallbatch-acc-<workload>.png``: test accuracy against epochs, a panel per batch
    (from the first evaluation after the start)."""
    return plot_panels(curves, workloads, batch_sizes, out, stem="smallbatch-acc",
                       ylabel="test accuracy %", skip_first=True)


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The paired tests as a Markdown table."""
    cols = ("workload", "batch", "contender", "against", "n", "diff", "se", "t", "p", "≥ 2 se")
    lines = ["", "Paired by seed (same initial weights and batches): difference of test accuracy "
             "(points), its standard error, paired t test (two-sided).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) and c != "diff" else
                 f"{row[c]:+.2f}" if c == "diff" else str(row[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
