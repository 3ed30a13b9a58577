"""What the Hogwild! parent and its worker processes share: the step size, the run's
configuration, each worker's order of the data and the sparse logistic kernel (the parent
starts the workers of :mod:`sgdlab.parallel._hogwild_procs`, which import only this)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sgdlab.errors import ConfigError
from sgdlab.optim import DiminishingLR


@dataclass(frozen=True)
class StepSize:
    """``η_t = lr`` (``kind="constant"``) or ``α/(μ(t + E))`` (``kind="diminishing"``).

    >>> StepSize.diminishing(mu=0.1, L=1.0)(0)  # α/(μE) with E = 2αL/μ: 1/(2L)
    0.5
    """

    kind: str
    lr: float = 0.0
    alpha: float = 2.0
    mu: float = 0.0
    E: float = 0.0

    @classmethod
    def constant(cls, lr: float) -> StepSize:
        if isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"Invalid lr: {lr}")
        return cls("constant", lr=float(lr))

    @classmethod
    def diminishing(
        cls, mu: float, L: float, alpha: float = 2.0, E: float | None = None
    ) -> StepSize:
        # DiminishingLR owns the checks (α > 1, μ <= L, E >= 2αL/μ) and the default E.
        scratch = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = DiminishingLR(scratch, mu=mu, L=L, alpha=alpha, E=E)
        return cls("diminishing", alpha=sched.alpha, mu=sched.mu, E=sched.E)

    def __call__(self, t: int) -> float:
        if self.kind == "constant":
            return self.lr
        return self.alpha / (self.mu * (t + self.E))


@dataclass(frozen=True)
class HogwildConfig:
    """One Hogwild! run. ``steps`` counts updates by all workers together.

    ``sparse=None`` picks the sparse path where it applies (sparse rows, one logit, a linear
    model). ``shard=False`` lets every worker read the whole data set and ``cap_threads=False``
    leaves torch's thread count alone: with ``sparse=False`` that is the pattern of PyTorch's
    ``mnist_hogwild`` example, kept as a baseline. ``log_points`` log-spaced steps at which
    ``‖w_t - w*‖²`` is recorded when an optimum is given. ``timeout_s`` bounds the whole run.
    """

    workers: int
    steps: int
    step_size: StepSize
    batch_size: int = 1
    seed: int = 0
    sparse: bool | None = None
    shard: bool = True
    cap_threads: bool = True
    log_points: int = 40
    device: str = "cpu"
    allow_cuda: bool = False
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "steps", "batch_size", "log_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Invalid {name}: {value} (an integer >= 1)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"Invalid seed: {self.seed}")
        if self.steps < self.workers:
            raise ConfigError(f"Invalid steps: {self.steps} (fewer than workers={self.workers})")
        if not isinstance(self.step_size, StepSize):
            raise ConfigError(f"Invalid step_size: {self.step_size!r} (a StepSize)")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(f"Invalid timeout_s: {self.timeout_s}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"Invalid device: {self.device!r} (cpu or cuda[:N])") from None


def shard_indices(n: int, workers: int, rank: int, seed: int) -> torch.Tensor:
    """Worker ``rank``'s shard: every ``workers``-th entry of a seeded permutation of ``0..n-1``.

    The shards of ``rank = 0..workers-1`` are disjoint and cover the data.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[rank::workers]


def epoch_order(shard: torch.Tensor, seed: int, rank: int, epoch: int) -> torch.Tensor:
    """The shard reshuffled for ``epoch``: a pure function of (seed, rank, epoch)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_003 + epoch + 1)
    return shard[torch.randperm(shard.numel(), generator=g)]


def sparse_logistic_step(
    w: np.ndarray,
    b: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    rows: np.ndarray,
    y: np.ndarray,
    inv_p: np.ndarray,
    lam: float,
    eta: float,
    before_write: Any = None,
) -> None:
    """One sparse step, in place on ``w`` (features) and ``b`` (the 1-element bias).

    ``cols``/``vals`` are the concatenated supports of the B rows, ``rows[k]`` says which row
    entry k belongs to, ``y`` the B labels. ``before_write`` (no arguments) is called between
    the read and the write (the worker reads the step counter there).
    """
    batch = y.size
    w_hat = w[cols]  # the read: a copy of the support, as Hogwild! reads it
    b_hat = float(b[0])
    if batch == 1:  # the common case, with fewer numpy calls (same arithmetic)
        z1 = float(np.dot(vals, w_hat)) + b_hat
        r1 = 1.0 / (1.0 + math.exp(-z1)) - float(y[0])
        grad = (r1 * vals + lam * w_hat * inv_p[cols]) * eta
        if before_write is not None:
            before_write()
        w[cols] -= grad  # a row's columns are distinct
        b[0] -= eta * (r1 + lam * b_hat)
        return
    z = np.bincount(rows, weights=vals * w_hat, minlength=batch) + b_hat
    r = 1.0 / (1.0 + np.exp(-z)) - y
    grad = (r[rows] * vals + lam * w_hat * inv_p[cols]) * (eta / batch)
    if before_write is not None:
        before_write()
    np.subtract.at(w, cols, grad)
    b[0] -= eta * (float(r.mean()) + lam * b_hat)


def _dist2(params: Sequence[torch.Tensor], optimum: Sequence[torch.Tensor]) -> float:
    pairs = zip(params, optimum, strict=True)
    return float(sum((p.detach().cpu().double() - o).pow(2).sum() for p, o in pairs))
