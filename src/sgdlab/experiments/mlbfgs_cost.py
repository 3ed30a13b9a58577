"""The cost per step of ``sgdlab bench mlbfgs``: SGD with momentum and mL-BFGS timed in
interleaved rounds, so that a busy machine slows both sides of each round's ratio alike (see
:mod:`sgdlab.experiments.mlbfgs`)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from sgdlab.errors import ConfigError
from sgdlab.optim import load_optimizer
from sgdlab.report.scoring import spread
from sgdlab.run.loop import warm_up_torch
from sgdlab.workloads import Workload

COST_RATIO = 1.5  # the goal: an mL-BFGS step costs at most 1.5x an SGD-momentum step


def step_cost(
    w: Workload,
    batch_size: int,
    rounds: int,
    steps_per_round: int,
    history: int = 10,
    update_freq: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """ms per iteration of SGD-momentum and mL-BFGS (history, T), interleaved; see module doc.

    Returns medians and [min, max] over ``rounds`` of each side and of the per-round ratio.
    """
    if rounds < 1 or steps_per_round < 1:
        raise ConfigError(f"invalid cost rounds/steps: {rounds}, {steps_per_round}")
    torch.set_num_threads(1)
    warm_up_torch()
    sides = {}
    for name, opts in (
        ("sgd-momentum", {"lr": 0.05, "momentum": 0.9}),
        ("mlbfgs", {"lr": 0.1, "history_size": history, "update_freq": update_freq}),
    ):
        model = w.make_model(seed)
        opt = load_optimizer(
            "sgd" if name == "sgd-momentum" else "mlbfgs", model.parameters(), **opts
        )
        sides[name] = (model, opt, torch.Generator().manual_seed(seed))
    batch = min(batch_size, w.num_train)

    def run(name: str, steps: int) -> float:
        model, opt, gen = sides[name]
        start = time.perf_counter()
        for _ in range(steps):
            x, y = w.batch(torch.randint(0, w.num_train, (batch,), generator=gen))
            opt.zero_grad(set_to_none=True)
            w.loss(model, x, y).backward()
            opt.step()
        return 1e3 * (time.perf_counter() - start) / steps

    warm = history * update_freq + update_freq + 1  # the history is full from here on
    for name in sides:
        run(name, warm)
    ms: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for i in range(rounds):
        for name in order if i % 2 == 0 else order[::-1]:
            ms[name].append(run(name, steps_per_round))
    ratios = [m / s for m, s in zip(ms["mlbfgs"], ms["sgd-momentum"], strict=True)]
    diag = sides["mlbfgs"][1].diagnostics()  # type: ignore[attr-defined]
    return {
        "workload": w.name,
        "batch": batch,
        "history": history,
        "update_freq": update_freq,
        "rounds": rounds,
        "steps_per_round": steps_per_round,
        "sgd_momentum_ms": spread(ms["sgd-momentum"]),
        "mlbfgs_ms": spread(ms["mlbfgs"]),
        "ratio": spread(ratios),
        "history_held": max(diag["history"].values(), default=0),
        "goal_met": statistics.median(ratios) <= COST_RATIO,
    }
