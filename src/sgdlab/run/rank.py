r"""The training entry every rank runs, under ``sgdlab dist`` or ``torchrun``.

:func:`rank_entry` trains one rank of a :class:`DistConfig`: the workload's training set is
partitioned over the ranks (IID, or Dirichlet(α) by label), each rank draws its batches from its
own part (a fresh permutation per epoch, seeded by (seed, rank, epoch)), and the chosen algorithm
wraps the chosen inner optimizer. All ranks pass a barrier and then start the clock, so start-up
and data loading are outside it.

**Evaluation stays off the clock.** Every ``eval_every`` steps the ranks average their models
(a collective without injected delay, its time excluded from every clock) and rank 0 keeps a
copy with the wall time and step; after the last step the models are averaged for good
(:meth:`~sgdlab.distributed.core.CooperativeSGD.synchronize`) and rank 0 evaluates the kept
copies. ``wall_seconds`` is rank 0's training time from the first step to the last, and
``compute_seconds + wait_seconds`` splits it; ``comm_seconds`` overlaps compute by the hidden
part.

**Checkpoints** (``checkpoint_every`` > 0, into ``checkpoint_dir``) are consistent cuts
(:mod:`sgdlab.distributed.checkpoints`): every rank's model, algorithm state (anchors, an
average in flight), inner optimizer, random generators, losses and clocks at the same step.
``resume`` continues from the newest cut every rank holds and ends with the parameters of an
uninterrupted run. Under ``torchrun --max-restarts N`` restarted ranks
(``TORCHELASTIC_RESTART_COUNT`` > 0) resume by themselves. A fresh run refuses a
``checkpoint_dir`` that already holds checkpoints. At the end rank 0 writes the averaged model
(``model.pt``) and the result (``result.json``) there.

**Failures.** A NaN or infinite loss or gradient (checked every step, before the step uses it)
stops the rank with a :class:`~sgdlab.errors.DivergenceError` naming the step and the last
complete checkpoint, and no checkpoint is written from non-finite values. A collective that
fails (a peer died, or stalled past ``collective_timeout_s``) stops the rank with a
:class:`~sgdlab.errors.CommError` naming the rank and step.

Across hosts, the same entry runs under ``torchrun`` (gloo; name the interface with
``GLOO_SOCKET_IFNAME`` if the hosts have several)::

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank <0|1> \
        --master-addr <host0> --master-port 29500 \
        -m sgdlab.cli dist --algo overlap --world-size 2 --workload cnn-fmnist ...
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sgdlab.checkpoint import atomic_write_bytes, save_checkpoint
from sgdlab.distributed.checkpoints import MODEL, RESULT, CutStore, step_dir
from sgdlab.distributed.cocod import CoCoDSGD
from sgdlab.distributed.comm import (
    Comm,
    init_from_env,
)
from sgdlab.distributed.core import CooperativeSGD, RoundStats
from sgdlab.distributed.easgd import EASGD
from sgdlab.distributed.local_sgd import LocalSGD
from sgdlab.distributed.overlap import OverlapLocalSGD
from sgdlab.distributed.sync_sgd import SyncSGD
from sgdlab.distributed.torch_local_sgd import TorchPostLocalSGD
from sgdlab.errors import CheckpointError, CommError, ConfigError, DivergenceError
from sgdlab.optim import load_optimizer
from sgdlab.run.config import DistConfig, partition_alpha
from sgdlab.run.finite import FiniteGuard, NonFinite, nonfinite_state
from sgdlab.run.loop import EpochSampler, Run, first_reaching, warm_up_torch
from sgdlab.workloads import Workload, get_workload
from sgdlab.workloads.partition import partition_dirichlet, partition_iid


def shard(workload: Workload, config: DistConfig, rank: int) -> np.ndarray:
    """The training indices of ``rank``."""
    alpha = partition_alpha(config.partition)
    if alpha is None:
        parts = partition_iid(workload.num_train, config.world_size, seed=config.seed)
    else:
        labels = workload.y_train.numpy().astype(np.int64)
        parts = partition_dirichlet(labels, config.world_size, alpha=alpha, seed=config.seed)
    return parts[rank]


def build_algorithm(
    config: DistConfig, model: nn.Module, inner: torch.optim.Optimizer, comm: Comm
) -> CooperativeSGD:
    if config.algo == "sync":
        return SyncSGD(model, inner, comm=comm)
    if config.algo == "local":
        return LocalSGD(model, inner, tau=config.tau, comm=comm)
    if config.algo == "overlap":
        return OverlapLocalSGD(model, inner, tau=config.tau, alpha=config.alpha,
                               anchor_momentum=config.anchor_momentum, comm=comm)
    if config.algo == "easgd":
        return EASGD(model, inner, tau=config.tau, alpha=config.alpha, comm=comm)
    if config.algo == "torch-local":
        return TorchPostLocalSGD(model, inner, tau=config.tau, comm=comm)
    return CoCoDSGD(model, inner, tau=config.tau, comm=comm)


def rank_entry(rank: int, world_size: int, config: DistConfig) -> dict[str, Any]:
    """Train rank ``rank``; rank 0's dict holds the run's result, every rank's its clocks."""
    return rank_entry_many(rank, world_size, [config])[0]


def rank_entry_many(rank: int, world_size: int, configs: list[DistConfig]) -> list[dict[str, Any]]:
    """Train several runs one after another in the same processes (data loaded once)."""
    workloads: dict[str, Workload] = {}
    out = []
    for config in configs:
        config.validate()
        if world_size != config.world_size:
            raise ConfigError(
                f"world size {world_size} differs from --world-size {config.world_size}"
            )
        key = f"{config.workload}{sorted(config.workload_options.items())}"
        if key not in workloads:
            workloads[key] = get_workload(config.workload, **config.workload_options)
        out.append(RankRun(rank, config, workloads[key]).run())
    return out


class RankRun(Run[dict[str, Any]]):
    """One rank's run: the model, its algorithm and, beside them, the run-level state: its
    clock (which excludes evaluation and checkpointing), losses, rank 0's evaluation snapshots,
    and its checkpoints (consistent cuts)."""

    def __init__(self, rank: int, config: DistConfig, workload: Workload) -> None:
        self.rank, self.config, self.workload = rank, config, workload
        self.steps, self.checkpoint_every = config.steps, config.checkpoint_every
        self.eval_every = config.eval_every or max(1, config.steps // 5)
        self.losses: list[tuple[int, float, float]] = []
        self.snapshots: list[tuple[int, float, list[torch.Tensor]]] = []
        self.last_cut: int | None = None
        self.checkpoints, self.checkpoint_seconds = 0, 0.0  # written by this process
        self._wall_before = 0.0  # training seconds of the run before it was resumed
        self._clock = time.perf_counter()
        self._excluded = 0.0

    # --- build and resume --------------------------------------------------------------------

    def build(self) -> None:
        rank, config, workload = self.rank, self.config, self.workload
        torch.manual_seed(config.seed * 1_000_003 + rank)
        part = self.part = torch.from_numpy(shard(workload, config, rank))
        if len(part) < config.batch_size:
            raise ConfigError(
                f"invalid batch-size: {config.batch_size} exceeds rank {rank}'s {len(part)} "
                "samples"
            )
        model = self.model = workload.make_model(config.seed)
        model.train()
        inner = load_optimizer(config.optimizer, model.parameters(), lr=config.lr,
                               **config.optimizer_options)
        comm = self.comm = Comm(config.injection())
        self.opt = build_algorithm(config, model, inner, comm)
        warm_up_torch()
        self.cuts = None
        if config.checkpoint_dir:
            self.cuts = CutStore(Path(config.checkpoint_dir), comm, config.key())
        self.guard = FiniteGuard(model, torch.device("cpu"))

    def resume(self) -> int:
        rank, config, workload = self.rank, self.config, self.workload
        model, part, comm = self.model, self.part, self.comm
        start = self.start = self._load_cut() if self.cuts is not None else 0
        if start == 0 and config.link_steps:
            mbps = _link_for(config, workload, model, part, comm)
            comm.injection = dataclasses.replace(comm.injection, bandwidth_mbps=mbps)
        self.sampler = EpochSampler(len(part), config.batch_size, config.seed, pool=part,
                                    stream=rank)
        comm.barrier()
        self.opt.start_clock()
        self.start_clock()
        return start

    def _load_cut(self) -> int:
        """Load the newest cut when resuming (a collective); the step to start from."""
        config = self.config
        assert self.cuts is not None
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
        if not (config.resume or restarted):
            self.cuts.check_fresh()
            return 0
        step = self.cuts.latest()
        if step is None:
            if restarted:  # torchrun restarted us before the first checkpoint: start over
                return 0
            raise CheckpointError(
                f"nothing to resume under {config.checkpoint_dir}: no checkpoint every rank holds"
            )
        state = self.cuts.load(step)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.comm.load_state_dict(state["comm"])
        torch.set_rng_state(state["torch_rng"])
        self._wall_before = float(state["wall_seconds"])
        self.opt.rounds = [RoundStats(int(a), int(b), c, d, e) for a, b, c, d, e in state["rounds"]]
        self.losses = [(int(a), float(b), float(c)) for a, b, c in state["losses"]]
        self.snapshots = [(int(d["step"]), float(d["wall_seconds"]), list(d["tensors"]))
                          for d in state["snapshots"]]
        self.last_cut = step
        return step

    # --- the clock ---------------------------------------------------------------------------

    def start_clock(self) -> None:
        self._clock, self._excluded = time.perf_counter(), 0.0

    def wall(self) -> float:
        return self._wall_before + time.perf_counter() - self._clock - self._excluded

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        """A block outside every clock (evaluation, checkpoints)."""
        t0 = time.perf_counter()
        with self.opt.paused():
            yield
        self._excluded += time.perf_counter() - t0

    # --- a step ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def stepping(self, start: int) -> Iterator[None]:
        try:
            yield
        except CommError as exc:
            raise CommError(f"rank {self.rank}, step {self.current + 1}: {exc}") from None

    def step(self, step: int) -> None:
        x, y = self.workload.batch(self.sampler.indices(step))
        loss = self.workload.loss(self.model, x, y)
        loss.backward()
        done = step + 1
        try:  # before the step uses them: a NaN gradient never reaches the model
            value = self.guard.check(loss)
        except NonFinite as exc:
            raise self.diverged(done, exc.what) from None
        self.opt.step()
        self.opt.zero_grad()
        self.losses.append((done, self.wall(), value))

    # --- off the clock -----------------------------------------------------------------------

    def evaluate(self, done: int) -> None:
        """Average the models (a collective); rank 0 keeps a copy to evaluate at the end."""
        wall = self.losses[-1][1]
        with self.excluded():
            averaged = self.opt.averaged_tensors()
            if self.rank == 0:
                self.snapshots.append((done, wall, averaged))

    def checkpoint(self, done: int) -> None:
        """Write this rank's part of the cut at ``done`` (all ranks call it at the same step)."""
        assert self.cuts is not None
        wall, t0 = self.wall(), time.perf_counter()
        with self.excluded():
            model, optimizer = self.model.state_dict(), self.opt.state_dict()
            bad = nonfinite_state(self.model, self.opt, model_state=model,
                                  optimizer_state=optimizer)
            if bad is not None:
                raise self.diverged(done, bad)
            self.cuts.save(done, {
                "model": model,
                "optimizer": optimizer,
                "comm": self.comm.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "wall_seconds": wall,
                "rounds": [[r.round, r.step, r.compute_seconds, r.comm_seconds, r.wait_seconds]
                           for r in self.opt.rounds],
                "losses": [list(row) for row in self.losses],
                "snapshots": [{"step": st, "wall_seconds": w, "tensors": ts}
                              for st, w, ts in self.snapshots],
            })
            self.last_cut = done
        self.checkpoints += 1
        self.checkpoint_seconds += time.perf_counter() - t0

    def diverged(self, step: int, what: str) -> DivergenceError:
        if self.last_cut is not None:
            cut = step_dir(Path(self.config.checkpoint_dir), self.last_cut)
            where = f"the last good checkpoint is {cut} (step {self.last_cut})"
        else:
            where = "no checkpoint was written"
        return DivergenceError(
            f"training diverged on rank {self.rank} at step {step} ({what}); {where}; "
            "try a smaller --lr"
        )

    # --- the end -----------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        config, opt = self.config, self.opt
        summary = opt.summary()
        opt.synchronize()
        checksum = float(sum(float(t.detach().double().sum()) for t in opt.tensors))
        out: dict[str, Any] = {"rank": self.rank, **summary, "steps": config.steps,
                               "final_checksum": checksum,
                               "link_mbps": self.comm.injection.bandwidth_mbps,
                               "resumed_from": self.start, "checkpoints": self.checkpoints,
                               "checkpoint_seconds": self.checkpoint_seconds}
        if self.rank == 0:
            out.update(_evaluate(self.workload, self.model, opt.tensors, self.snapshots, config))
            out["losses"] = self.losses
            if self.cuts is not None:
                root = Path(config.checkpoint_dir)
                save_checkpoint({"key": config.key(), "step": config.steps,
                                 "model": self.model.state_dict()}, root / MODEL)
                atomic_write_bytes(root / RESULT, json.dumps(out, default=str).encode())
        return out


def _link_for(
    config: DistConfig, workload: Workload, model: nn.Module, part: torch.Tensor, comm: Comm,
    probe_steps: int = 8,
) -> float:
    r"""The injected rate (Mbit/s) at which one all-reduce of the model's tensors takes
    ``link_steps`` local steps, the step time measured now on a throwaway copy of the model.

    With :math:`n` bytes to send and :math:`t` seconds per step (forward and backward, the
    median of ``probe_steps``, averaged over ranks), :math:`B = 8n / (	ext{link\_steps}\cdot t)`.
    Measuring at the start of each run keeps the link matched to the machine's load then.
    """
    probe = copy.deepcopy(model)
    x, y = workload.batch(part[: config.batch_size])
    times = []
    for _ in range(probe_steps):
        t0 = time.perf_counter()
        workload.loss(probe, x, y).backward()
        times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    step = float(comm.average([torch.tensor([step], dtype=torch.float64)], inject=False).wait()[0])
    nbytes = sum(t.numel() * t.element_size() for t in
                 [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())])
    return 8.0 * nbytes / (config.link_steps * step) / 1e6


def _evaluate(
    workload: Workload, model: nn.Module, live: list[torch.Tensor],
    snapshots: list[tuple[int, float, list[torch.Tensor]]], config: DistConfig,
) -> dict[str, Any]:
    n = config.eval_samples
    if n and n < len(workload.y_test) and isinstance(workload.x_test, torch.Tensor):
        # A fixed subset keeps evaluation cheap; the same one for every run of a workload.
        workload = dataclasses.replace(
            workload, x_test=workload.x_test[:n], y_test=workload.y_test[:n], train_eval_size=n
        )
    probe = copy.deepcopy(model)
    tensors = [*probe.parameters(), *(b for b in probe.buffers() if b.is_floating_point())]
    evaluations = []
    for step, wall, values in snapshots:
        with torch.no_grad():
            for t, v in zip(tensors, values, strict=True):
                t.copy_(v)
        evaluations.append({"step": step, "wall_seconds": wall, **workload.evaluate(probe)})
    first = first_reaching(evaluations, workload.metric, workload.target)
    reached = (first["wall_seconds"], first["step"]) if first else None
    last = evaluations[-1]
    return {
        **asdict(config), "metric": workload.metric, "target": workload.target,
        "final_loss": last["train_loss"], "test_loss": last["test_loss"],
        "metric_value": last[workload.metric],
        "time_to_target": reached[0] if reached else None,
        "step_to_target": reached[1] if reached else None,
        "evaluations": evaluations,
    }


def run_under_torchrun(config: DistConfig) -> dict[str, Any] | None:
    """The ``torchrun`` path: join the group from the environment, train this rank, tear down.

    Returns rank 0's result (other ranks get None); the caller prints it and then must call
    :func:`~sgdlab.distributed.comm.teardown_and_exit`.
    """
    torch.set_num_threads(1)
    rank, world_size = init_from_env(config.collective_timeout_s)
    result = rank_entry(rank, world_size, config)
    return result if rank == 0 else None


__all__ = ["build_algorithm", "rank_entry", "rank_entry_many", "run_under_torchrun"]
