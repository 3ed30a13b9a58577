"""Plots of recorded runs (matplotlib, Agg backend: files only, no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sgdlab.report.scoring import label_of  # noqa: E402
from sgdlab.run.store import ResultStore, RunRow  # noqa: E402


def plot_workload(store: ResultStore, runs: list[RunRow], path: Path) -> Path:
    """Training loss against steps and against seconds, and the test metric, one line a run
    (runs of one label share a colour)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours: dict[str, str] = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    target = None
    for run in runs:
        label = label_of(run)
        first = label not in colours
        colour = colours.setdefault(label, palette[len(colours) % len(palette)])
        evals = store.evaluations(run.id)
        if not evals:
            continue
        steps = [e[0] for e in evals]
        seconds = [e[1] for e in evals]
        train_loss = [e[2] for e in evals]
        metric = [e[4] for e in evals]
        kw = {"color": colour, "label": label if first else None, "alpha": 0.9, "marker": "."}
        axes[0].plot(steps, train_loss, **kw)
        axes[1].plot(seconds, train_loss, **kw)
        axes[2].plot(steps, metric, **kw)
        target = run.extra.get("target", target)
    axes[0].set(xlabel="step", ylabel="training objective", yscale="log")
    axes[1].set(
        xlabel="training seconds (evaluation excluded)", ylabel="training objective", yscale="log"
    )
    axes[2].set(xlabel="step", ylabel=runs[0].metric or "metric")
    if target is not None:
        axes[2].axhline(float(target), color="grey", linestyle="--", linewidth=1, label="target")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[2].legend(fontsize=7, loc="lower right")
    fig.suptitle(runs[0].workload)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_runs(store: ResultStore, runs: list[RunRow], folder: Path) -> list[Path]:
    """One figure per workload, ``<folder>/<workload>.png``."""
    by_workload: dict[str, list[RunRow]] = defaultdict(list)
    for r in runs:
        by_workload[r.workload].append(r)
    return [plot_workload(store, rs, folder / f"{w}.png") for w, rs in sorted(by_workload.items())]
