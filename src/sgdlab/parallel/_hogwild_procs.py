"""The process side of Hogwild! (:mod:`sgdlab.parallel.hogwild`): what travels to a worker, the
worker's loops (sparse and dense), its lock-free step counter and recorder, and the parent's
wait that turns any failure into one clear error and leaves no process behind."""

from __future__ import annotations

import os
import queue as queue_mod
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sgdlab.errors import ConfigError, SgdlabError
from sgdlab.parallel._shared import (
    HogwildConfig,
    _dist2,
    epoch_order,
    shard_indices,
    sparse_logistic_step,
)
from sgdlab.workloads.base import Workload

_POLL_S = 0.05


@dataclass
class _Job:
    config: HogwildConfig
    sparse: bool
    counts: torch.Tensor
    optimum: list[torch.Tensor] | None
    log_at: np.ndarray


@dataclass
class _SparseData:
    indptr: torch.Tensor
    indices: torch.Tensor
    data: torch.Tensor
    y: torch.Tensor
    inv_p: torch.Tensor
    l2: float
    weight: torch.Tensor  # shared, flat (features,)
    bias: torch.Tensor  # shared, (1,)


@dataclass
class _DenseData:
    workload: Workload
    model: torch.nn.Module


def _warm_up() -> None:
    # The first optimizer step of a process imports torch's compiler stack (~1 s): pay it
    # before the barrier, off the clock. Draws no random number.
    scratch = torch.nn.Parameter(torch.zeros(1))
    scratch.grad = torch.zeros(1)
    torch.optim.SGD([scratch], lr=0.0).step()


def _worker(rank: int, job: _Job, data: Any, barrier: Any, results: Any) -> None:
    try:
        config = job.config
        if config.cap_threads:
            torch.set_num_threads(max(1, _cores() // config.workers))
        if not job.sparse:  # the sparse loop never calls an optimizer
            _warm_up()
        loop = _sparse_loop if job.sparse else _dense_loop
        report = loop(rank, job, data, barrier)
        results.put(("done", rank, report))
    except BaseException:  # noqa: B036 - the parent must hear of any failure, then we exit 1
        results.put(("error", rank, traceback.format_exc()))
        raise SystemExit(1) from None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Counter:
    """The lock-free global step: worker ``rank`` writes only ``count[rank]``."""

    def __init__(self, counts: torch.Tensor, rank: int) -> None:
        self.c = counts.numpy()
        self.rank = rank

    def now(self) -> int:
        return int(self.c.sum())

    def tick(self) -> None:
        self.c[self.rank] += 1


class _Recorder:
    """Staleness per update, and ``‖w_t - w*‖²`` at the log points (off the clock)."""

    def __init__(self, job: _Job, params: Sequence[torch.Tensor], steps: int) -> None:
        self.taus = np.zeros(steps, dtype=np.int64)
        self.params, self.optimum = params, job.optimum
        self.log_at = job.log_at
        self.next = 0
        self.trace: list[tuple[int, float]] = []
        self.off_clock = 0.0

    def after_write(self, t: int) -> None:
        if self.optimum is None or self.next >= self.log_at.size or t < self.log_at[self.next]:
            return
        start = time.perf_counter()
        self.trace.append((t, _dist2(self.params, self.optimum)))
        self.next = int(np.searchsorted(self.log_at, t, side="right"))
        self.off_clock += time.perf_counter() - start

    def start(self) -> None:
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def report(self, steps: int) -> dict[str, Any]:
        seconds = time.perf_counter() - self.t0 - self.off_clock
        # CPU time tells a worker that waited for a core apart from one that computed slowly.
        cpu = time.process_time() - self.cpu0 - self.off_clock
        return {"steps": steps, "seconds": seconds, "cpu_seconds": cpu, "trace": self.trace,
                "staleness_hist": np.bincount(self.taus[:steps])}


def _plan(job: _Job, rank: int, n: int) -> tuple[torch.Tensor, int]:
    config = job.config
    steps = config.steps // config.workers + (rank < config.steps % config.workers)
    shard = (
        shard_indices(n, config.workers, rank, config.seed) if config.shard else torch.arange(n)
    )
    if shard.numel() < config.batch_size:
        raise ConfigError(f"Invalid batch_size: {config.batch_size} (exceeds a worker's shard)")
    return shard, steps


def _batches(job: _Job, rank: int, shard: torch.Tensor) -> Any:
    b = job.config.batch_size
    epoch = 0
    while True:
        order = epoch_order(shard, job.config.seed, rank, epoch).numpy()
        for start in range(0, order.size - b + 1, b):
            yield order[start : start + b]
        epoch += 1


def _sparse_loop(rank: int, job: _Job, d: _SparseData, barrier: Any) -> dict[str, Any]:
    shard, steps = _plan(job, rank, len(d.y))
    indptr, indices = d.indptr.numpy(), d.indices.numpy()
    values, labels, inv_p = d.data.numpy(), d.y.numpy(), d.inv_p.numpy()
    w, b = d.weight.numpy(), d.bias.numpy()
    counter = _Counter(job.counts, rank)
    rec = _Recorder(job, [d.weight, d.bias], steps)
    step_size, lam = job.config.step_size, d.l2
    batches = _batches(job, rank, shard)
    t_read, k = 0, 0
    one_row = np.zeros(0, dtype=np.int64)

    def before_write() -> None:
        nonlocal k
        rec.taus[k] = counter.now() - t_read
        k += 1

    barrier.wait()
    rec.start()
    for _ in range(steps):
        idx = next(batches)
        if idx.size == 1:
            lo, hi = indptr[idx[0]], indptr[idx[0] + 1]
            cols, vals = indices[lo:hi], values[lo:hi]
            rows = one_row  # the batch-1 step does not read it
        else:
            spans = [np.arange(indptr[i], indptr[i + 1]) for i in idx]
            pos = np.concatenate(spans)
            cols, vals = indices[pos], values[pos]
            rows = np.repeat(np.arange(idx.size), [s.size for s in spans])
        t_read = counter.now()
        sparse_logistic_step(w, b, cols, vals, rows, labels[idx].astype(np.float64), inv_p,
                             lam, step_size(t_read), before_write)
        counter.tick()
        rec.after_write(counter.now())
    return rec.report(steps)


def _dense_loop(rank: int, job: _Job, d: _DenseData, barrier: Any) -> dict[str, Any]:
    workload, model = d.workload, d.model
    shard, steps = _plan(job, rank, workload.num_train)
    device = torch.device(job.config.device)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=1.0)  # per-process optimizer; its lr is η_t below
    counter = _Counter(job.counts, rank)
    rec = _Recorder(job, params, steps)
    batches = _batches(job, rank, shard)
    barrier.wait()
    rec.start()
    for k in range(steps):
        idx = torch.from_numpy(next(batches))
        t_read = counter.now()
        x, y = workload.batch(idx, device)
        opt.zero_grad(set_to_none=False)
        workload.loss(model, x, y).backward()
        opt.param_groups[0]["lr"] = job.config.step_size(t_read)
        rec.taus[k] = counter.now() - t_read
        opt.step()
        counter.tick()
        rec.after_write(counter.now())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return rec.report(steps)


def _collect(procs: list[Any], results: Any, timeout_s: float | None) -> list[dict[str, Any]]:
    """Wait for every worker's report; on a failure or a timeout stop them all and raise."""
    reports: dict[int, dict[str, Any]] = {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    failure = None
    try:
        while len(reports) < len(procs):
            try:
                kind, rank, payload = results.get(timeout=_POLL_S)
            except queue_mod.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(procs)
                        if p.exitcode is not None and r not in reports]
                if dead and failure is None:
                    # Give a report sent just before the exit a moment to arrive.
                    try:
                        kind, rank, payload = results.get(timeout=1.0)
                    except queue_mod.Empty:
                        r, code = dead[0]
                        failure = f"Hogwild! worker {r} died with exit code {code} and no report"
                        break
                elif deadline is not None and time.monotonic() > deadline:
                    failure = f"Hogwild! run exceeded timeout_s={timeout_s}: workers stopped"
                    break
                else:
                    continue
            if kind == "error":
                last = payload.strip().splitlines()[-1] if payload.strip() else "unknown error"
                failure = f"Hogwild! worker {rank} failed: {last}"
                break
            reports[rank] = payload
    finally:
        for p in procs:
            if p.is_alive() and (failure is not None or len(reports) < len(procs)):
                p.terminate()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
    if failure is not None:
        raise SgdlabError(failure)
    return [reports[r] for r in range(len(procs))]
