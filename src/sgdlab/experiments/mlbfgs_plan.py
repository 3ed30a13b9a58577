"""What ``sgdlab bench mlbfgs`` compares and for how long: the contenders, each workload's plan
and one invocation's configuration (its fields are the command's options)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sgdlab.errors import ConfigError
from sgdlab.run.config import option
from sgdlab.run.store import DEFAULT_DB


@dataclass(frozen=True)
class Contender:
    """An optimizer as it enters the benchmark: registry name, reference step size (the middle
    of its grid), fixed hyperparameters, and its own batch size (``None``: the benchmark's)."""

    name: str
    optimizer: str
    lr: float
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None


CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in (
        Contender("mlbfgs", "mlbfgs", 0.1, {"history_size": 10, "update_freq": 10}),
        Contender("sgd-momentum", "sgd", 0.05, {"momentum": 0.9}),
        Contender("adam", "adam", 1e-3),
        Contender("adamw", "adamw", 1e-3, {"weight_decay": 1e-2}),
        Contender(
            "lbfgs",
            "lbfgs",
            1.0,
            {"line_search_fn": "strong_wolfe", "max_iter": 1, "history_size": 10},
            batch_size=1024,
        ),
        # Four iterations per batch: all but the first pair of a step come from one batch.
        Contender(
            "lbfgs-iter4",
            "lbfgs",
            1.0,
            {"line_search_fn": "strong_wolfe", "max_iter": 4, "history_size": 10},
            batch_size=1024,
        ),
        Contender("soap", "peer:soap", 3e-3),
        Contender("shampoo", "peer:shampoo", 1e-3),
    )
}


DEFAULT_CONTENDERS = ("mlbfgs", "sgd-momentum", "adam", "adamw", "lbfgs", "soap")


BASELINE = "sgd-momentum"  # the reference of the cost-per-step goal


@dataclass(frozen=True)
class WorkloadPlan:
    """How long one workload trains and how it is evaluated.

    ``eval_train``/``eval_test``: evaluate on a fixed seeded subset of this many training/test
    samples (``None``: the workload's own choice, the whole test set). ``target``: the metric
    value for time to target, in place of the workload's own (``None``), for budgets too short
    to reach that; reports say which target they used.
    """

    steps: int
    eval_every: int
    lr_factors: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    eval_train: int | None = None
    eval_test: int | None = None
    target: float | None = None


# Scaled to the ~25 min budget on two shared cores (see benchmarks/results/mlbfgs.md).
PLANS: dict[str, WorkloadPlan] = {
    "logreg-fmnist": WorkloadPlan(500, 50, eval_train=10_000),
    # The workloads' own targets (0.97, 0.88) need several epochs: the budget gives 1.7 and 0.3.
    "mlp-mnist": WorkloadPlan(800, 50, target=0.96),
    "cnn-fmnist": WorkloadPlan(
        150, 25, lr_factors=(1.0, 3.0), eval_train=1000, eval_test=2000, target=0.82
    ),
}


@dataclass
class MlbfgsBenchConfig:
    """One invocation of the benchmark (``sgdlab bench mlbfgs``)."""

    workloads: tuple[str, ...] = field(default=tuple(PLANS), metadata=option(
        "Workload (repeat); default logreg-fmnist, mlp-mnist, cnn-fmnist.", name="workload",
        cli_type=list[str] | None, cli_default=None, parse=lambda v: tuple(v or PLANS)))
    contenders: tuple[str, ...] = field(default=DEFAULT_CONTENDERS, metadata=option(
        "Contender (repeat): mlbfgs, sgd-momentum, adam, adamw, lbfgs, lbfgs-iter4, soap, "
        "shampoo; default all but lbfgs-iter4, shampoo.", name="contender",
        cli_type=list[str] | None, cli_default=None,
        parse=lambda v: tuple(v or DEFAULT_CONTENDERS)))
    seeds: int = field(default=3, metadata=option("Seeds at the tuned step size."))
    batch_size: int = field(default=128,
                            metadata=option("Batch (L-BFGS: 1024, same samples)."))
    steps_scale: float = field(default=1.0, metadata=option("Multiply every workload's steps."))
    plans: dict[str, WorkloadPlan] = field(default_factory=lambda: dict(PLANS))
    cost_rounds: int = field(default=7, metadata=option(
        "Interleaved rounds of the step-cost measurement (0: skip)."))
    cost_steps: int = 20
    db: Path = field(default=DEFAULT_DB, metadata=option("Results database (SQLite).", "--db"))
    out: Path = field(default=Path("sgdlab-results") / "mlbfgs",
                      metadata=option("Folder for the plots and the report."))

    def validate(self) -> None:
        if not self.workloads:
            raise ConfigError("invalid workloads: name at least one")
        unknown = [c for c in self.contenders if c not in CONTENDERS]
        if unknown:
            raise ConfigError(
                f"unknown contender {unknown[0]!r}; choose from {', '.join(CONTENDERS)}"
            )
        if "mlbfgs" not in self.contenders:
            raise ConfigError("invalid contenders: mlbfgs must be one of them")
        if len(set(self.contenders)) != len(self.contenders):
            raise ConfigError(f"invalid contenders: {self.contenders} repeats a name")
        for name in ("seeds", "batch_size", "cost_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"invalid {name.replace('_', '-')}: {getattr(self, name)}")
        if self.cost_rounds < 0:
            raise ConfigError(f"invalid cost-rounds: {self.cost_rounds} (must be >= 0)")
        if not (math.isfinite(self.steps_scale) and self.steps_scale > 0):
            raise ConfigError(f"invalid steps-scale: {self.steps_scale}")
        for w in self.workloads:
            plan = self.plan(w)
            if plan.steps < 1 or plan.eval_every < 1:
                raise ConfigError(f"invalid plan for {w}: steps and eval_every must be >= 1")
            if not plan.lr_factors or any(not f > 0 for f in plan.lr_factors):
                raise ConfigError(f"invalid lr factors for {w}: {plan.lr_factors}")

    def plan(self, workload: str) -> WorkloadPlan:
        """The workload's plan with ``steps_scale`` applied (at least one step)."""
        base = self.plans.get(workload, WorkloadPlan(500, 50))
        steps = max(1, round(base.steps * self.steps_scale))
        return replace(base, steps=steps, eval_every=min(base.eval_every, steps))
