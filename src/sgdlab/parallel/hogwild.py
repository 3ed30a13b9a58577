r"""Hogwild!: K processes run SGD on one model in shared memory, with no locks.

Reference: F. Niu, B. Recht, C. Ré, S. Wright, "Hogwild!: A Lock-Free Approach to Parallelizing
Stochastic Gradient Descent", NeurIPS 2011; convergence without bounded gradients:
L. M. Nguyen et al., ICML 2018 (``sgdlab.theory.sgd_bounds``).

Every worker repeats, on a sample ξ of its own shard of the data,

.. math::

    \hat w \leftarrow \text{read}(w), \qquad
    w \leftarrow w - \eta_t \nabla f(\hat w; \xi) \quad\text{(in place, no lock)},

where other workers may have written ``w`` between the read and the write. ``t`` is a global
step counter kept lock-free: worker ``k`` only ever writes its own slot ``count[k]`` (a
``K``-vector in shared memory), and ``t = Σ_k count[k]``. The **staleness** of an update is
``τ = t_write - t_read``: the number of other workers' updates committed between its read of
the model and its write. The step is constant or ``η_t = α/(μ(t + E))`` (the diminishing step
of ``sgdlab.optim.DiminishingLR``) at ``t = t_read``.

**Sparse updates** (``sparse-logreg``): a binary logistic component depends on the model only
through the support ``S_i`` of its row (plus the bias), so a step reads and writes those
coordinates alone, with no autograd and no dense temporary. The dense penalty
``λ/2‖θ‖²`` would touch every coordinate; it is spread over the rows as
``λ/2 Σ_{j∈S_i} θ_j²/p_j`` (``p_j`` the fraction of rows holding feature j; derivation and the
matching constants in ``sgdlab.workloads.constants``), which leaves F unchanged. With
``z = x_iᵀŵ + b̂`` and ``r = σ(z) - y_i`` the step is

.. math::

    w_j \mathrel{-}= \eta_t\,(r\,x_{ij} + \lambda \hat w_j / p_j)\ (j \in S_i), \qquad
    b \mathrel{-}= \eta_t\,(r + \lambda \hat b);

for a batch of B rows, the mean of their steps (scatter-added). Coordinates no training row
touches have ``θ*_j = 0`` and no step moves them; they start at 0.

**Which bound.** A sparse step writes the whole support, so its direction is the exact
gradient of the rescaled component: with one worker (τ = 0) it is plain SGD on those
components, and ``E‖w_t - w*‖² <= C/(t+E)`` holds with their μ, L, N and D = 1
(``estimate_constants(workload, sparse=True)``). ``D`` = the largest support enters where one
sampled coordinate is written, scaled by the support size (``sgdlab.theory.sgd_bounds``), and
in the delay analysis of several workers; for K > 1 the benchmark reports how the measurement
compares with the sequential curve rather than claim it. (The bound draws ξ independently;
workers reshuffle their shards every epoch, which in practice does no worse.)

**Dense updates** (every other workload): each worker runs autograd on the shared parameters
and an SGD step of its own optimizer writes into them, as in PyTorch's ``mnist_hogwild``.

Workers are started with ``spawn``; each caps its threads at ``max(1, cores // K)``, draws its
samples from a disjoint shard reshuffled every epoch, and waits at a barrier so that the clock
starts when all have imported torch (the process side lives in ``_hogwild_procs``). A worker
that fails sends its traceback; one that dies without a word is noticed by its exit code;
either way the parent stops the others and raises :class:`~sgdlab.errors.SgdlabError`. A CUDA
model is refused unless ``allow_cuda=True``: unsynchronised writes from several processes to
one CUDA tensor have no guarantee at all (and the sparse path is CPU-only).

>>> shard_indices(10, workers=3, rank=1, seed=0).numel()
3
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from sgdlab.errors import ConfigError
from sgdlab.parallel._hogwild_procs import _collect, _DenseData, _Job, _SparseData, _worker
from sgdlab.parallel._shared import (
    HogwildConfig,
    StepSize,
    _dist2,
    epoch_order,
    shard_indices,
    sparse_logistic_step,
)
from sgdlab.workloads.base import SparseRows, Workload
from sgdlab.workloads.constants import feature_frequency
from sgdlab.workloads.models import LinearClassifier


@dataclass
class HogwildResult:
    """What a run measured. ``trace`` rows are ``(t, ‖w_t - w*‖²)``, ``t`` the global step.

    ``seconds`` is the slowest worker's wall time in its loop; ``cpu_seconds`` the CPU time of
    all workers' loops together (on a busy machine, less than ``workers × seconds``).
    """

    workers: int
    steps: int
    batch_size: int
    sparse: bool
    seconds: float
    samples_per_second: float
    cpu_seconds: float
    staleness_mean: float
    staleness_p99: float
    staleness_max: int
    steps_per_worker: list[int]
    trace: list[tuple[int, float]] = field(default_factory=list)
    evaluation: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["trace"] = [[t, d] for t, d in self.trace]
        return out


def run_hogwild(
    workload: Workload,
    config: HogwildConfig,
    model: torch.nn.Module | None = None,
    optimum: Sequence[np.ndarray] | None = None,
) -> HogwildResult:
    """Train ``workload`` with ``config.workers`` lock-free processes; evaluate at the end.

    ``model`` (default ``workload.make_model(config.seed)``) is trained in place: its
    parameters are moved to shared memory. ``optimum`` (θ* per parameter, e.g.
    ``workload.optimum().params``) turns on the ``‖w_t - w*‖²`` trace.
    """
    device = torch.device(config.device)
    if device.type == "cuda" and not config.allow_cuda:
        raise ConfigError(
            "Hogwild! refuses a CUDA model: lock-free writes from several processes to one "
            "CUDA tensor have no safety guarantee (opt in with allow_cuda=True / --allow-cuda)"
        )
    model = workload.make_model(config.seed) if model is None else model
    model = model.to(device)
    can_sparse = _use_sparse(workload, model) and device.type == "cpu"
    sparse = can_sparse if config.sparse is None else config.sparse
    if sparse and not can_sparse:
        raise ConfigError(
            f"Invalid sparse=True for workload {workload.name!r}: the sparse path needs sparse "
            "rows, one logit, a linear model and the CPU"
        )
    if config.batch_size > workload.num_train:
        raise ConfigError(f"Invalid batch_size: {config.batch_size} (more than the data)")
    params = list(model.parameters())
    opt_params = None
    if optimum is not None:
        opt_params = [torch.as_tensor(np.asarray(p), dtype=torch.float64) for p in optimum]
        if [tuple(p.shape) for p in opt_params] != [tuple(p.shape) for p in params]:
            raise ConfigError("Invalid optimum: its shapes do not match the model's parameters")
    with torch.no_grad():
        if sparse:
            assert isinstance(workload.x_train, SparseRows)
            inv_p = _inverse_frequency(workload.x_train)
            params[0].view(-1)[inv_p == 0] = 0.0  # untouched coordinates: θ*_j = 0 (docstring)
        for p in params:
            p.share_memory_()
    trace: list[tuple[int, float]] = []
    if opt_params is not None:
        trace.append((0, _dist2(params, opt_params)))

    ctx = mp.get_context("spawn")
    counts = torch.zeros(config.workers, dtype=torch.int64).share_memory_()
    barrier = ctx.Barrier(config.workers)
    results: Any = ctx.Queue()
    job = _Job(config=config, sparse=sparse, counts=counts, optimum=opt_params,
               log_at=_log_steps(config.steps, config.log_points))
    if sparse:
        assert isinstance(workload.x_train, SparseRows)
        data: Any = _SparseData(
            workload.x_train.indptr, workload.x_train.indices, workload.x_train.data,
            workload.y_train, inv_p.float(), float(workload.l2),
            params[0].detach().view(-1), params[1].detach().view(-1),
        )
    else:
        data = _DenseData(_portable(workload), model)
    procs = [
        ctx.Process(target=_worker, args=(rank, job, data, barrier, results), daemon=True)
        for rank in range(config.workers)
    ]
    for proc in procs:
        proc.start()
    reports = _collect(procs, results, config.timeout_s)

    hist = np.zeros(1, dtype=np.int64)
    for rep in reports:
        h = rep["staleness_hist"]
        if h.size > hist.size:
            h, hist = hist, h
        hist[: h.size] += h
        trace.extend(rep["trace"])
    seconds = max(rep["seconds"] for rep in reports)
    total = int(sum(rep["steps"] for rep in reports))
    result = HogwildResult(
        workers=config.workers,
        steps=total,
        batch_size=config.batch_size,
        sparse=sparse,
        seconds=seconds,
        samples_per_second=total * config.batch_size / seconds if seconds > 0 else math.inf,
        cpu_seconds=float(sum(rep["cpu_seconds"] for rep in reports)),
        staleness_mean=float((np.arange(hist.size) * hist).sum() / max(1, hist.sum())),
        staleness_p99=_quantile(hist, 0.99),
        staleness_max=int(np.flatnonzero(hist).max()) if hist.any() else 0,
        steps_per_worker=[int(rep["steps"]) for rep in reports],
        trace=_first_per_point(trace, job.log_at),
    )
    result.evaluation = workload.evaluate(model, device)
    return result


# --- private helpers of the parent -----------------------------------------------------------


def _not_in_worker() -> torch.nn.Module:
    raise RuntimeError("a Hogwild! worker trains the shared model; it builds none")


def _portable(workload: Workload) -> Workload:
    """The workload without its factories (often lambdas, which cannot be pickled)."""
    return dataclasses.replace(workload, make_module=_not_in_worker, optimum_fn=None)


def _use_sparse(workload: Workload, model: torch.nn.Module) -> bool:
    return (
        isinstance(workload.x_train, SparseRows)
        and workload.num_classes == 2
        and isinstance(model, LinearClassifier)
    )


def _inverse_frequency(x: SparseRows) -> torch.Tensor:
    p = feature_frequency(x)
    return torch.where(p > 0, 1.0 / p.clamp_min(1e-300), torch.zeros_like(p))


def _log_steps(steps: int, points: int) -> np.ndarray:
    return np.unique(np.rint(np.geomspace(1, steps, num=points)).astype(np.int64))


def _first_per_point(trace: list[tuple[int, float]], log_at: np.ndarray) -> list[tuple[int, float]]:
    """Per log point, the first record at or after it (workers may both record near one)."""
    trace = sorted(trace)
    out = [trace[0]] if trace and trace[0][0] == 0 else []
    ts = np.array([t for t, _ in trace], dtype=np.int64)
    for point in log_at:
        k = int(np.searchsorted(ts, point))
        if k < len(trace) and (not out or trace[k][0] > out[-1][0]):
            out.append(trace[k])
    return out


def _quantile(hist: np.ndarray, q: float) -> float:
    if not hist.any():
        return 0.0
    cdf = np.cumsum(hist) / hist.sum()
    return float(np.searchsorted(cdf, q))


__all__ = [
    "HogwildConfig",
    "HogwildResult",
    "StepSize",
    "epoch_order",
    "run_hogwild",
    "shard_indices",
    "sparse_logistic_step",
]
