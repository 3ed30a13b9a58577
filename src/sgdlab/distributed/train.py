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

Across hosts, the same entry runs under ``torchrun`` (gloo; name the interface with
``GLOO_SOCKET_IFNAME`` if the hosts have several)::

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank <0|1> \
        --master-addr <host0> --master-port 29500 \
        -m sgdlab.cli dist --algo overlap --world-size 2 --workload cnn-fmnist ...
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sgdlab.distributed.cocod import CoCoDSGD
from sgdlab.distributed.comm import Comm, Injection, init_from_env, teardown_and_exit
from sgdlab.distributed.core import CooperativeSGD
from sgdlab.distributed.easgd import EASGD
from sgdlab.distributed.local_sgd import LocalSGD
from sgdlab.distributed.overlap import OverlapLocalSGD
from sgdlab.distributed.sync_sgd import SyncSGD
from sgdlab.errors import ConfigError
from sgdlab.optim import load_optimizer
from sgdlab.workloads import Workload, get_workload
from sgdlab.workloads.partition import partition_dirichlet, partition_iid
from sgdlab.workloads.registry import workload_options

ALGOS = ("sync", "local", "overlap", "easgd", "cocod")


@dataclass
class DistConfig:
    """One distributed run; ``batch_size`` is per rank."""

    algo: str
    world_size: int = 2
    workload: str = "cnn-fmnist"
    optimizer: str = "sgd"
    lr: float = 0.05
    batch_size: int = 32
    tau: int = 2
    alpha: float = 0.6
    anchor_momentum: float = 0.0
    steps: int = 200
    seed: int = 0
    partition: str = "iid"
    bandwidth_mbps: float = 0.0
    link_steps: float = 0.0  # > 0: a link on which an all-reduce takes this many local steps
    latency_ms: float = 0.0
    straggler_prob: float = 0.0
    straggler_slowdown: float = 1.0
    eval_every: int = 0
    eval_samples: int = 2000  # test and training samples each evaluation uses (0: all)
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    workload_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.algo not in ALGOS:
            raise ConfigError(f"unknown algo {self.algo!r}; choose one of {', '.join(ALGOS)}")
        for name in ("world_size", "batch_size", "tau", "steps"):
            if isinstance(getattr(self, name), bool | float) or getattr(self, name) < 1:
                raise ConfigError(f"invalid {name.replace('_', '-')}: {getattr(self, name)}")
        if not math.isfinite(self.link_steps) or self.link_steps < 0:
            raise ConfigError(f"invalid link-steps: {self.link_steps}")
        if self.link_steps and self.bandwidth_mbps:
            raise ConfigError("give --link-steps or --bandwidth-mbps, not both")
        for name in ("seed", "eval_every", "eval_samples"):
            if isinstance(getattr(self, name), bool | float) or getattr(self, name) < 0:
                raise ConfigError(f"invalid {name.replace('_', '-')}: {getattr(self, name)}")
        if not math.isfinite(self.lr) or self.lr < 0:
            raise ConfigError(f"invalid lr: {self.lr}")
        if "lr" in self.optimizer_options:
            raise ConfigError("give the learning rate with --lr, not --set lr=...")
        # Unknown names and bad hyperparameters: one line here, not a failure in every rank.
        unknown = sorted(set(self.workload_options) - set(workload_options(self.workload)))
        if unknown:
            raise ConfigError(f"workload {self.workload!r} has no option {', '.join(unknown)}")
        load_optimizer(self.optimizer, [nn.Parameter(torch.zeros(1))], lr=self.lr,
                       **self.optimizer_options)
        # The algorithms check these too, but inside the ranks: a bad one should not spawn them.
        if not (math.isfinite(self.alpha) and 0 <= self.alpha <= 1) or (
            self.algo == "easgd" and self.alpha == 0
        ):
            raise ConfigError(f"invalid alpha: {self.alpha} (need 0 <= alpha <= 1; easgd > 0)")
        if not (math.isfinite(self.anchor_momentum) and 0 <= self.anchor_momentum < 1):
            raise ConfigError(f"invalid anchor-momentum: {self.anchor_momentum} (need 0 <= it < 1)")
        if self.algo == "sync" and self.tau != 1:
            self.tau = 1  # sync communicates every step by definition
        partition_alpha(self.partition)
        self.injection()

    def injection(self) -> Injection:
        try:
            return Injection(self.bandwidth_mbps, self.latency_ms, self.straggler_prob,
                             self.straggler_slowdown, self.seed)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def partition_alpha(spec: str) -> float | None:
    """``"iid"`` → None; ``"dirichlet:0.5"`` → 0.5.

    >>> partition_alpha("dirichlet:0.5"), partition_alpha("iid")
    (0.5, None)
    """
    if spec == "iid":
        return None
    kind, _, value = spec.partition(":")
    try:
        alpha = float(value)
    except ValueError:
        alpha = float("nan")
    if kind != "dirichlet" or not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"invalid partition {spec!r}; use iid or dirichlet:<alpha > 0>")
    return alpha


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
    return CoCoDSGD(model, inner, tau=config.tau, comm=comm)


def _warm_up_torch() -> None:
    """Pay torch's lazy imports (the first optimizer step: about a second) before the clock."""
    scratch = nn.Parameter(torch.zeros(1))
    scratch.grad = torch.zeros(1)
    torch.optim.SGD([scratch], lr=0.0).step()


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
        out.append(_train_rank(rank, config, workloads[key]))
    return out


def _train_rank(rank: int, config: DistConfig, workload: Workload) -> dict[str, Any]:
    torch.manual_seed(config.seed * 1_000_003 + rank)
    part = torch.from_numpy(shard(workload, config, rank))
    if len(part) < config.batch_size:
        raise ConfigError(
            f"invalid batch-size: {config.batch_size} exceeds rank {rank}'s {len(part)} samples"
        )
    model = workload.make_model(config.seed)
    model.train()
    inner = load_optimizer(config.optimizer, model.parameters(), lr=config.lr,
                           **config.optimizer_options)
    comm = Comm(config.injection())
    opt = build_algorithm(config, model, inner, comm)
    _warm_up_torch()
    if config.link_steps:
        mbps = _link_for(config, workload, model, part, comm)
        comm.injection = dataclasses.replace(comm.injection, bandwidth_mbps=mbps)
    eval_every = config.eval_every or max(1, config.steps // 5)
    per_epoch = len(part) // config.batch_size
    perm = part
    snapshots: list[tuple[int, float, list[torch.Tensor]]] = []
    losses: list[tuple[int, float, float]] = []
    comm.barrier()
    opt.start_clock()
    clock, excluded = time.perf_counter(), 0.0
    for step in range(config.steps):
        epoch, pos = divmod(step, per_epoch)
        if pos == 0:
            g = torch.Generator().manual_seed((config.seed * 1_000_003 + rank) * 10_007 + epoch)
            perm = part[torch.randperm(len(part), generator=g)]
        x, y = workload.batch(perm[pos * config.batch_size : (pos + 1) * config.batch_size])
        loss = workload.loss(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        done = step + 1
        wall = time.perf_counter() - clock - excluded
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ConfigError(
                f"training diverged at step {done} (loss {value}); try a smaller --lr"
            )
        losses.append((done, wall, value))
        if done % eval_every == 0 or done == config.steps:
            t0 = time.perf_counter()
            averaged = opt.averaged_tensors()
            if rank == 0:
                snapshots.append((done, wall, averaged))
            excluded += time.perf_counter() - t0
    summary = opt.summary()
    opt.synchronize()
    checksum = float(sum(float(t.detach().double().sum()) for t in opt.tensors))
    out: dict[str, Any] = {"rank": rank, **summary, "steps": config.steps,
                           "final_checksum": checksum,
                           "link_mbps": comm.injection.bandwidth_mbps}
    if rank == 0:
        out.update(_evaluate(workload, model, opt.tensors, snapshots, config))
        out["losses"] = losses
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
    evaluations, reached = [], None
    for step, wall, values in snapshots:
        with torch.no_grad():
            for t, v in zip(tensors, values, strict=True):
                t.copy_(v)
        row = {"step": step, "wall_seconds": wall, **workload.evaluate(probe)}
        evaluations.append(row)
        if reached is None and row[workload.metric] >= workload.target:
            reached = (wall, step)
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
    import torch.distributed as dist

    torch.set_num_threads(1)
    init_from_env()
    result = rank_entry(dist.get_rank(), dist.get_world_size(), config)
    return result if dist.get_rank() == 0 else None


__all__ = ["ALGOS", "DistConfig", "build_algorithm", "rank_entry", "rank_entry_many",
           "run_under_torchrun", "teardown_and_exit"]
