"""Benchmark suites: named lists of runs, trained one after another, then scored and reported.

``quick`` is the showcase behind ``make demo``: the convex, the MLP and the CNN workload, each
with plain SGD, SGD with momentum and Adam (and SGD with the diminishing step on the convex
one), short enough to finish in a few minutes on two cores.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from sgdlab.errors import ConfigError
from sgdlab.report.html import build_report
from sgdlab.report.sections import Section, ShowcaseContext
from sgdlab.run.config import TrainConfig, check_output_paths
from sgdlab.run.store import ResultStore
from sgdlab.run.train import train
from sgdlab.workloads import Workload, get_workload


def _quick_suite() -> list[TrainConfig]:
    runs = []
    for opt, lr, extra in (("sgd", 0.1, {}), ("sgd", 0.05, {"momentum": 0.9}), ("adam", 1e-3, {})):
        for workload, steps in (("logreg-fmnist", 1000), ("mlp-mnist", 1200), ("cnn-fmnist", 400)):
            runs.append(
                TrainConfig(workload=workload, optimizer=opt, lr=lr, steps=steps, batch_size=64,
                            optimizer_options=extra, eval_every=steps // 5)
            )
    return runs


SUITES = {"quick": _quick_suite}


_Showcase = Callable[[ShowcaseContext], Section]

# Each method adds its short showcase to `bench quick` (and so to `make demo`) here, as
# "module:function" so that a suite imports only what it runs.
SHOWCASES: dict[str, list[str]] = {
    "quick": [
        "sgdlab.experiments.hogwild:hogwild_showcase",
        "sgdlab.experiments.biased_practice:biased_practice_showcase",
        "sgdlab.experiments.overlap:overlap_showcase",
        "sgdlab.experiments.smallbatch:smallbatch_showcase",
        "sgdlab.experiments.mlbfgs:quick_showcase",
    ],
}


def _load_showcase(ref: str) -> _Showcase:
    module, _, name = ref.partition(":")
    fn: _Showcase = getattr(importlib.import_module(module), name)
    return fn


def run_suite(
    name: str, db: Path, out: Path, quiet: bool = False, seeds: int = 1
) -> dict[str, Any]:
    """Train every run of suite ``name`` (``seeds`` seeds each), then report on this invocation."""
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    check_output_paths(db, out)
    tag = f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    configs = [
        replace(
            c,
            seed=s,
            db=db,
            suite=tag,
            out=out / "runs",
            progress=False if quiet else None,
            # One torch thread: these models are small, and on a shared machine a second
            # OpenMP thread that has to wait for a core makes every step many times slower.
            threads=c.threads or 1,
        )
        for c in SUITES[name]()
        for s in range(seeds)
    ]
    console = Console(stderr=True, quiet=quiet)
    workloads: dict[str, Workload] = {}
    for i, config in enumerate(configs, 1):
        console.print(
            f"[{i}/{len(configs)}] {config.workload} · {config.optimizer} lr={config.lr}"
            f" {config.optimizer_options or ''} {config.schedule} · seed {config.seed}"
        )
        if config.workload not in workloads:
            workloads[config.workload] = get_workload(config.workload)
        train(config, workload=workloads[config.workload])
    context = ShowcaseContext(db=db, out=out, tag=tag, quiet=quiet, console=console)
    sections = []
    for ref in SHOWCASES.get(name, []):
        console.print(f"showcase: {ref}")
        sections.append(_load_showcase(ref)(context))
    with ResultStore(db) as store:
        summary = build_report(
            store, out, suite=tag, title=f"sgdlab bench {name}", quiet=quiet, sections=sections
        )
    summary["suite"] = tag
    return summary
