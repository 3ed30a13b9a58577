"""One Hogwild! run (``sgdlab hogwild``): the workload, the step size, the run, a JSON-ready dict
of throughput, staleness, final loss and metric, and ``‖w - w*‖²`` where w* is known."""

from __future__ import annotations

from typing import Any

from sgdlab.errors import ConfigError
from sgdlab.parallel.hogwild import HogwildConfig, StepSize, run_hogwild
from sgdlab.run.loop import diminishing_constants
from sgdlab.workloads import Workload, get_workload
from sgdlab.workloads.base import SparseRows
from sgdlab.workloads.constants import smoothness


def hogwild_once(
    workload: str,
    workers: int,
    steps: int,
    lr: float = 0.1,
    schedule: str = "constant",
    mu: float | None = None,
    L: float | None = None,
    alpha: float = 2.0,
    seed: int = 0,
    batch_size: int = 1,
    workload_options: dict[str, Any] | None = None,
    device: str = "cpu",
    allow_cuda: bool = False,
) -> dict[str, Any]:
    """One Hogwild! run of ``workload``; ``steps`` counts updates by all workers together.

    ``schedule="diminishing"`` ignores ``lr`` and uses ``α/(μ(t+E))``; μ and L default to the
    workload's (for sparse updates, the L of the rescaled components).
    """
    wl = get_workload(workload, **(workload_options or {}))
    model = wl.make_model(seed)
    sparse = sparse_applies(wl)
    if schedule == "constant":
        step = StepSize.constant(lr)
    elif schedule == "diminishing":
        mu, L = diminishing_constants(
            wl, mu, L, f"schedule 'diminishing' on {workload!r} needs --mu and --L (it is not "
            "convex)", smoothness=lambda: smoothness(wl, sparse=sparse),
        )
        step = StepSize.diminishing(mu=mu, L=L, alpha=alpha)
    else:
        raise ConfigError(f"Invalid schedule: {schedule!r} (choose 'constant' or 'diminishing')")
    config = HogwildConfig(workers=workers, steps=steps, step_size=step, batch_size=batch_size,
                           seed=seed, device=device, allow_cuda=allow_cuda, log_points=2)
    optimum = wl.optimum().params if wl.convex else None
    res = run_hogwild(wl, config, model=model, optimum=optimum)
    out: dict[str, Any] = {
        "workload": workload,
        "workers": res.workers,
        "steps": res.steps,
        "batch_size": res.batch_size,
        "sparse": res.sparse,
        "schedule": schedule,
        "eta0": step(0),
        "seconds": res.seconds,
        "cpu_seconds": res.cpu_seconds,
        "samples_per_second": res.samples_per_second,
        "final_loss": res.evaluation["train_loss"],
        "test_loss": res.evaluation["test_loss"],
        "metric": wl.metric,
        "metric_value": res.evaluation[wl.metric],
        "staleness_mean": res.staleness_mean,
        "staleness_p99": res.staleness_p99,
        "staleness_max": res.staleness_max,
        "steps_per_worker": res.steps_per_worker,
    }
    if res.trace:
        out["dist_to_opt"] = res.trace[-1][1]
        out["dist_to_opt_start"] = res.trace[0][1]
    return out


def sparse_applies(wl: Workload) -> bool:
    return isinstance(wl.x_train, SparseRows) and wl.num_classes == 2 and wl.convex
