"""What every trainer shares: the loop of a :class:`Run`, the epoch sampler, the torch warm-up,
the rule that a diminishing step needs μ and L, and the time to target.

A run is built, resumed (or started), stepped, evaluated and checkpointed on a fixed schedule,
and finished; :meth:`Run.run` is that loop, written once::

    run.build()                             # model, optimizer, data, outputs
    start = run.resume()                    # from the newest checkpoint, or 0
    for step in range(start, run.steps):
        run.step(step)                      # batch, loss, backward, checks, optimizer step
        if done % eval_every == 0 or done == steps: run.evaluate(done)
        if checkpoint_every divides done and done < steps: run.checkpoint(done)
    return run.finish()                     # last checks, the result, the final files

:class:`sgdlab.run.train.SingleRun` (``sgdlab train``) and :class:`sgdlab.run.rank.RankRun`
(each rank of ``sgdlab dist``) fill in those six steps.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import torch

from sgdlab.errors import ConfigError
from sgdlab.workloads import Workload

R = TypeVar("R")


class Run(ABC, Generic[R]):
    """One training run; subclasses fill in the steps :meth:`run` calls, in its order."""

    steps: int
    eval_every: int
    checkpoint_every: int
    current: int = 0  # the step being taken, for error messages

    @abstractmethod
    def build(self) -> None:
        """The model, the optimizer, the data, the outputs: everything, before any step."""

    @abstractmethod
    def resume(self) -> int:
        """Continue from a checkpoint, or start; the first step to take, ready to take it."""

    @abstractmethod
    def step(self, step: int) -> None:
        """Take step ``step`` (0-based; it is logged as ``step + 1``)."""

    @abstractmethod
    def evaluate(self, done: int) -> None:
        """Evaluate after ``done`` steps, off the clock."""

    @abstractmethod
    def checkpoint(self, done: int) -> None:
        """Write a checkpoint after ``done`` steps, off the clock."""

    @abstractmethod
    def finish(self) -> R:
        """The last checks, the result and the final files."""

    def stepping(self, start: int) -> contextlib.AbstractContextManager[Any]:
        """What the steps run inside (a progress bar, an error's context); nothing by default."""
        return contextlib.nullcontext()

    def run(self) -> R:
        """Run to the last step; see the module doc."""
        self.build()
        start = self.resume()
        with self.stepping(start):
            for step in range(start, self.steps):
                self.current = step
                self.step(step)
                done = step + 1  # steps are numbered from 1, as in the logs and checkpoints
                if done % self.eval_every == 0 or done == self.steps:
                    self.evaluate(done)
                if self.checkpoint_every and done % self.checkpoint_every == 0 \
                        and done < self.steps:
                    self.checkpoint(done)
        return self.finish()


class EpochSampler:
    """Batch ``step`` of a run: slice ``step % per_epoch`` of epoch ``step // per_epoch``'s
    permutation, drawn from a generator seeded by (seed, epoch). Incomplete batches are dropped.

    ``pool`` draws from those indices instead of ``range(n)`` (a rank's shard), and ``stream``
    gives each rank its own sequence of permutations.
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, pool: torch.Tensor | None = None,
                 stream: int | None = None) -> None:
        if batch_size > n:
            raise ConfigError(f"invalid batch-size: {batch_size} exceeds the {n} training samples")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._pool, self._stream = pool, stream
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _epoch_seed(self, epoch: int) -> int:
        if self._stream is None:
            return self.seed * 1_000_003 + epoch
        return (self.seed * 1_000_003 + self._stream) * 10_007 + epoch

    def indices(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self._epoch_seed(epoch))
            perm = torch.randperm(self.n, generator=g)
            self._epoch, self._perm = epoch, perm if self._pool is None else self._pool[perm]
        return self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]


_warmed_up = False


def warm_up_torch() -> None:
    """Pay torch's one-time lazy imports before the clock starts.

    The first ``Optimizer.step`` of a process imports torch's compiler stack (over a second on
    our machines); charged to the first run's clock it would make whichever optimizer runs
    first look slow. A throwaway step on a scratch parameter draws no random number.
    """
    global _warmed_up
    if not _warmed_up:
        scratch = torch.nn.Parameter(torch.zeros(1))
        scratch.grad = torch.zeros(1)
        torch.optim.SGD([scratch], lr=0.0).step()
        _warmed_up = True


def diminishing_constants(
    workload: Workload, mu: float | None, L: float | None, refusal: str,
    smoothness: Callable[[], float] | None = None,
) -> tuple[float, float]:
    """μ and L of the diminishing step ``α/(μ(t+E))``: the given ones, else the workload's
    (``smoothness()`` of a convex workload, where given, else its declared L). A workload that
    is not convex has neither: the run is refused with ``refusal``, one line, before it starts.
    """
    if mu is None:
        mu = workload.mu
    if L is None:
        L = smoothness() if smoothness is not None and workload.convex else workload.L
    if mu is None or L is None:
        raise ConfigError(refusal)
    return mu, L


def first_reaching(
    evaluations: Sequence[dict[str, Any]], metric: str, target: float
) -> dict[str, Any] | None:
    """The first evaluation whose ``metric`` reached ``target`` (time to target), else None.

    >>> first_reaching([{"step": 5, "acc": 0.5}, {"step": 9, "acc": 0.9}], "acc", 0.8)
    {'step': 9, 'acc': 0.9}
    """
    for row in evaluations:
        if row[metric] >= target:
            return row
    return None
