r"""``sgdlab bench mlbfgs``: the evidence for mL-BFGS (S5) against what practitioners use.

Contenders (:data:`CONTENDERS`): mL-BFGS, SGD with momentum, Adam, AdamW, ``torch.optim.LBFGS``
with its strong-Wolfe line search at a large batch, and the second-order peer SOAP of
``pytorch_optimizer`` (Shampoo is on offer but not in the default set: one step costs 100-300
SGD steps at its default settings on these models). ``lbfgs`` makes one L-BFGS iteration per
step, so each curvature pair mixes two batches' gradients; ``lbfgs-iter4`` (not in the default
set) makes four per step, three of them with pairs from a single batch.

**Protocol.** On each workload every contender is tuned over the *same relative grid*: its
reference step size times each factor of :attr:`WorkloadPlan.lr_factors`, seed 0 only. The
chosen step size is the one that reaches the workload's target in the fewest steps, or, if none
does, the one with the lowest final training objective. Seeds ``1 .. seeds-1`` then run at the
chosen step size, and the tables report median [min, max] over the seeds, seed 0 included.
Every run goes through :func:`sgdlab.run.train.train` (one thread; the clock excludes
evaluation) and lands in the results database under one suite tag.

**Equal samples, honest counts.** L-BFGS takes a batch of ``lbfgs_batch_size`` and as many steps
as make the same number of samples as the others' ``steps * batch_size``. The runner calls
``opt.step(closure)``, and one L-BFGS step evaluates the closure once plus once per line-search
trial, so the tables count *gradient evaluations* (closure calls: a forward and a backward pass)
and *samples* (gradient evaluations times the batch) besides steps. Counts come from a wrapper of
the workload that tallies ``loss`` calls per ``batch`` call, so they are measured, not assumed.

**Time to target** is the training time at the first evaluation whose metric reaches the
workload's target, so its resolution is ``eval_every`` steps. Goals (issue 7), per workload:

* *steps*: mL-BFGS reaches the target in fewer steps (median over seeds; a run that never
  reaches it counts as infinitely many) than every baseline;
* *wall-clock*: mL-BFGS's median time to target is at most 0.7 times the best baseline's.

**Cost per step** (:func:`step_cost`): SGD with momentum and mL-BFGS at history 10, T = 10 train
the same model on the same batches, interleaved in rounds of ``steps_per_round`` steps (the
order alternates between rounds), after a warm-up long enough to fill mL-BFGS's history
(``history * T`` steps). Each round gives ms per iteration (batch, forward, backward, step);
the ratio is taken per round, so a busy machine slows both sides of each ratio alike.

>>> c = CONTENDERS["lbfgs"]
>>> c.optimizer, c.options["line_search_fn"], c.batch_size
('lbfgs', 'strong_wolfe', 1024)
>>> lr_grid(0.1, (1 / 3, 1.0, 3.0))
(0.0333, 0.1, 0.3)
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from sgdlab.errors import ConfigError, DivergenceError
from sgdlab.experiments.mlbfgs_cost import step_cost
from sgdlab.experiments.mlbfgs_plan import (
    CONTENDERS,
    DEFAULT_CONTENDERS,
    PLANS,
    Contender,
    MlbfgsBenchConfig,
    WorkloadPlan,
)
from sgdlab.experiments.mlbfgs_tables import cost_row, display_row, print_summary, summary_markdown
from sgdlab.report.html import build_report
from sgdlab.report.plots import plot_workload
from sgdlab.report.scoring import spread
from sgdlab.report.sections import Section, ShowcaseContext
from sgdlab.run.config import TrainConfig, check_output_paths
from sgdlab.run.store import ResultStore
from sgdlab.run.train import RunResult, train
from sgdlab.workloads import Workload, get_workload
from sgdlab.workloads.base import Batch
from sgdlab.workloads.registry import workload_spec

__all__ = [
    "CONTENDERS",
    "DEFAULT_CONTENDERS",
    "PLANS",
    "Contender",
    "MlbfgsBenchConfig",
    "WorkloadPlan",
    "lr_grid",
    "quick_showcase",
    "run_mlbfgs_bench",
    "step_cost",
    "summary_markdown",
]

STEPS_RATIO, WALL_RATIO = 1.0, 0.7  # the goals: < steps, <= 0.7x (and COST_RATIO)


def lr_grid(reference: float, factors: tuple[float, ...]) -> tuple[float, ...]:
    """``reference * factor`` for each factor, to three significant digits."""
    return tuple(float(f"{reference * f:.3g}") for f in factors)


@dataclass
class _CountedWorkload(Workload):
    """The workload, counting closure calls (gradient evaluations) per training step: the
    runner draws one ``batch`` per step and every closure call computes ``loss`` once."""

    evals: list[int] = field(default_factory=list)

    def batch(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> Batch:
        self.evals.append(0)
        return super().batch(idx, device)

    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.evals:
            self.evals[-1] += 1
        return super().loss(model, x, y)


def _counted(w: Workload) -> _CountedWorkload:
    return _CountedWorkload(**{f.name: getattr(w, f.name) for f in fields(Workload)})


def _bench_workload(name: str, plan: WorkloadPlan, **options: Any) -> Workload:
    """The workload (built with ``options``) with its evaluation subsets (seeded, so every run
    sees the same ones)."""
    w = get_workload(name, **options)
    if plan.target is not None:
        w = replace(w, target=plan.target)
    if plan.eval_train is not None:
        w = replace(w, train_eval_size=plan.eval_train)
    if plan.eval_test is not None and plan.eval_test < len(w.y_test):
        if not isinstance(w.x_test, torch.Tensor):
            raise ConfigError(f"invalid eval_test for {name}: its test set is sparse")
        idx = torch.randperm(len(w.y_test), generator=torch.Generator().manual_seed(1))
        idx = idx[: plan.eval_test]
        w = replace(w, x_test=w.x_test[idx], y_test=w.y_test[idx])
    return w


@dataclass
class _Trial:
    contender: str
    lr: float
    seed: int
    batch_size: int
    steps: int
    result: RunResult | None  # None: diverged
    evals: list[int]

    @property
    def reached_step(self) -> int | None:
        return None if self.result is None else self.result.step_to_target

    def tuning_key(self) -> tuple[float, float]:
        """Fewest steps to target first, then the lowest final training objective."""
        if self.result is None:
            return (math.inf, math.inf)
        step = self.result.step_to_target
        final = self.result.final_loss if math.isfinite(self.result.final_loss) else math.inf
        return (math.inf if step is None else float(step), final)

    def evals_to_target(self) -> int | None:
        step = self.reached_step
        return None if step is None else sum(self.evals[:step])


def _train_one(
    cfg: MlbfgsBenchConfig,
    w: Workload,
    c: Contender,
    plan: WorkloadPlan,
    lr: float,
    seed: int,
    tag: str,
) -> _Trial:
    batch = min(c.batch_size or cfg.batch_size, w.num_train)
    # Equal samples: a contender with its own batch takes proportionally fewer steps.
    ratio = cfg.batch_size / batch
    steps = max(1, round(plan.steps * ratio))
    eval_every = max(1, round(plan.eval_every * ratio))
    counted = _counted(w)
    config = TrainConfig(
        workload=w.name,
        optimizer=c.optimizer,
        lr=lr,
        steps=steps,
        batch_size=batch,
        seed=seed,
        optimizer_options=dict(c.options),
        eval_every=eval_every,
        db=cfg.db,
        out=cfg.out / "runs",
        threads=1,
        suite=tag,
        progress=False,
    )
    try:
        result: RunResult | None = train(config, workload=counted)
    except DivergenceError:
        result = None
    return _Trial(c.name, lr, seed, batch, steps, result, counted.evals)


def _median_inf(values: list[float | None]) -> float:
    """Median with ``None`` (target not reached, or diverged) as infinity."""
    return float(statistics.median([math.inf if v is None else float(v) for v in values]))


def _row(workload: str, name: str, trials: list[_Trial]) -> dict[str, Any]:
    done = [t for t in trials if t.result is not None]
    res = [t.result for t in done if t.result is not None]
    evals_total = sum(sum(t.evals) for t in done)
    steps_total = sum(len(t.evals) for t in done)
    return {
        "workload": workload,
        "contender": name,
        "lr": trials[0].lr,
        "batch": trials[0].batch_size,
        "steps": trials[0].steps,
        "runs": len(trials),
        "diverged": len(trials) - len(done),
        "reached": sum(r.step_to_target is not None for r in res),
        "steps_to_target": spread(r.step_to_target for r in res),
        "evals_to_target": spread(t.evals_to_target() for t in done),
        "samples_to_target": spread(
            None if t.evals_to_target() is None else t.evals_to_target() * t.batch_size  # type: ignore[operator]
            for t in done
        ),
        "time_to_target": spread(r.time_to_target for r in res),
        "ms_per_step": spread(1e3 * r.train_seconds / r.steps for r in res),
        "evals_per_step": evals_total / steps_total if steps_total else float("nan"),
        "final_loss": spread(r.final_loss for r in res),
        "accuracy": spread(r.metric_value for r in res),
        "median_steps_to_target": _median_inf([t.reached_step for t in trials]),
        "median_time_to_target": _median_inf(
            [None if t.result is None else t.result.time_to_target for t in trials]
        ),
        "run_ids": [r.run_id for r in res],
    }


def _goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The steps and wall-clock goals on one workload, from its rows."""
    ours = next(r for r in rows if r["contender"] == "mlbfgs")
    others = [r for r in rows if r["contender"] != "mlbfgs"]
    best_steps = min((r["median_steps_to_target"] for r in others), default=math.inf)
    best_time = min((r["median_time_to_target"] for r in others), default=math.inf)
    best_by_time = min(others, key=lambda r: r["median_time_to_target"], default=None)
    s, t = ours["median_steps_to_target"], ours["median_time_to_target"]
    return {
        "mlbfgs_steps": s,
        "best_baseline_steps": best_steps,
        "steps_goal_met": math.isfinite(s) and s < best_steps,
        "mlbfgs_seconds": t,
        "best_baseline_seconds": best_time,
        "best_baseline": None if best_by_time is None else best_by_time["contender"],
        "time_ratio": t / best_time if math.isfinite(t) and math.isfinite(best_time) else None,
        "wall_goal_met": math.isfinite(t) and t <= WALL_RATIO * best_time,
    }


def run_mlbfgs_bench(cfg: MlbfgsBenchConfig, quiet: bool = False) -> dict[str, Any]:
    """Tune, run the seeds, measure step cost, score, plot and report; returns a summary."""
    cfg.validate()
    for wname in cfg.workloads:  # an unknown workload fails before the database is created
        workload_spec(wname)
    check_output_paths(cfg.db, cfg.out)
    console = Console(stderr=True, quiet=quiet)
    tag = f"mlbfgs-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    goals: dict[str, Any] = {}
    costs: list[dict[str, Any]] = []
    images: list[Path] = []
    tuning: list[dict[str, Any]] = []
    targets: dict[str, float] = {}
    with ResultStore(cfg.db) as store:
        for wname in cfg.workloads:
            plan = cfg.plan(wname)
            w = _bench_workload(wname, plan)
            chosen: dict[str, list[_Trial]] = {}
            for cname in cfg.contenders:
                c = CONTENDERS[cname]
                grid = []
                for lr in lr_grid(c.lr, plan.lr_factors):
                    console.print(f"{wname} · {cname} lr={lr} · seed 0 (grid)")
                    grid.append(_train_one(cfg, w, c, plan, lr, 0, tag))
                best = min(grid, key=lambda t: t.tuning_key())
                tuning += [
                    {
                        "workload": wname,
                        "contender": cname,
                        "lr": t.lr,
                        "step_to_target": t.reached_step,
                        "diverged": t.result is None,
                        "final_loss": None if t.result is None else t.result.final_loss,
                        "chosen": t is best,
                    }
                    for t in grid
                ]
                trials = [best]
                for seed in range(1, cfg.seeds):
                    console.print(f"{wname} · {cname} lr={best.lr} · seed {seed}")
                    trials.append(_train_one(cfg, w, c, plan, best.lr, seed, tag))
                chosen[cname] = trials
            wrows = [_row(wname, n, ts) for n, ts in chosen.items()]
            rows += wrows
            goals[wname] = _goals(wrows)
            targets[wname] = w.target
            ids = {i for r in wrows for i in r["run_ids"]}
            final_runs = [r for r in store.runs(suite=tag) if r.id in ids]
            if final_runs:
                images.append(plot_workload(store, final_runs, cfg.out / f"mlbfgs-{wname}.png"))
            if cfg.cost_rounds:
                console.print(f"{wname} · step cost, {cfg.cost_rounds} interleaved rounds")
                costs.append(step_cost(w, cfg.batch_size, cfg.cost_rounds, cfg.cost_steps))
        compute_s = time.perf_counter() - started
        section = Section(
            "mL-BFGS against its baselines (tuned step size, median [min, max] over seeds)",
            "Steps, gradient evaluations (closure calls) and samples to the workload's target; "
            "training seconds exclude evaluation.",
            [display_row(r) for r in rows],
            images,
        )
        report = build_report(
            store, cfg.out, suite=tag, title="sgdlab bench mlbfgs", quiet=True, sections=[section]
        )
    summary = {
        "suite": tag,
        "compute_seconds": compute_s,
        "config": {
            "workloads": list(cfg.workloads),
            "contenders": list(cfg.contenders),
            "seeds": cfg.seeds,
            "batch_size": cfg.batch_size,
            "plans": {w: cfg.plan(w).__dict__ for w in cfg.workloads},
        },
        "targets": targets,
        "rows": [display_row(r) for r in rows],
        "goals": {w: {k: _finite(v) for k, v in g.items()} for w, g in goals.items()},
        "step_cost": [cost_row(c) for c in costs],
        "tuning": tuning,
        "plots": [str(p) for p in images],
        "report": report["report"],
    }
    (cfg.out / "summary.md").write_text(summary_markdown(summary))
    if not quiet:
        print_summary(summary)
    return summary


def _finite(v: Any) -> Any:
    """JSON has no infinity: a target never reached is ``None``."""
    return None if isinstance(v, float) and math.isinf(v) else v


def quick_showcase(ctx: ShowcaseContext) -> Section:
    """``make demo``'s look at mL-BFGS: against SGD-momentum and Adam on ``logreg-fmnist``,
    400 steps of batch 128, seed 0, loss against steps and seconds (about 20 s)."""
    plan = WorkloadPlan(400, 50, lr_factors=(1.0,), eval_train=10_000)
    cfg = MlbfgsBenchConfig(db=ctx.db, out=ctx.out)
    w = _bench_workload("logreg-fmnist", plan)
    tag = f"{ctx.tag}-mlbfgs"
    trials = [
        _train_one(cfg, w, CONTENDERS[name], plan, CONTENDERS[name].lr, 0, tag)
        for name in ("mlbfgs", "sgd-momentum", "adam")
    ]
    rows = [display_row(_row(w.name, t.contender, [t])) for t in trials]
    with ResultStore(ctx.db) as store:
        image = plot_workload(store, store.runs(suite=tag), ctx.out / "mlbfgs-showcase.png")
    keep = "contender lr steps_to_target time_to_target ms_per_step final_loss accuracy".split()
    return Section(
        "mL-BFGS (history 10, T = 10) vs SGD-momentum and Adam, logreg-fmnist",
        "400 steps of 128 samples, seed 0, reference step sizes; see `sgdlab bench mlbfgs`.",
        [{k: r[k] for k in keep} for r in rows],
        [image],
    )
