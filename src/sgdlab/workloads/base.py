"""A workload: data in memory, a model, the training objective, the metric and its target.

:class:`Workload` is what the runner, Hogwild! and the distributed algorithms train; it knows
nothing of optimizers or timing. Batches are drawn by index (``batch(idx)``), so whoever owns
the loop owns the sampling, and a seeded permutation per epoch makes runs reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

Batch = tuple[torch.Tensor, torch.Tensor]


class SparseRows:
    """CSR rows kept as torch tensors, gathered into a sparse COO batch by row index."""

    def __init__(self, matrix: Any) -> None:
        csr = matrix.tocsr()
        self.shape = (int(csr.shape[0]), int(csr.shape[1]))
        self.indptr = torch.from_numpy(np.asarray(csr.indptr, dtype=np.int64))
        self.indices = torch.from_numpy(np.asarray(csr.indices, dtype=np.int64))
        self.data = torch.from_numpy(np.asarray(csr.data, dtype=np.float32))

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` as a coalesced ``(len(rows), n_features)`` sparse COO tensor."""
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        out_row = torch.repeat_interleave(torch.arange(len(rows)), lengths)
        # Position of each nonzero inside the CSR arrays: its row's start plus its offset.
        offsets = torch.arange(int(lengths.sum())) - torch.repeat_interleave(
            torch.cumsum(lengths, 0) - lengths, lengths
        )
        pos = torch.repeat_interleave(starts, lengths) + offsets
        index = torch.stack([out_row, self.indices[pos]])
        # Built from valid CSR rows, so the invariants hold; checking them costs a pass.
        return torch.sparse_coo_tensor(
            index,
            self.data[pos],
            (len(rows), self.shape[1]),
            is_coalesced=True,
            check_invariants=False,
        )

    def row_norms_sq(self) -> torch.Tensor:
        rows = torch.repeat_interleave(torch.arange(self.shape[0]), self.indptr.diff())
        return torch.zeros(self.shape[0]).index_add_(0, rows, self.data.double().pow(2).float())


Features = torch.Tensor | SparseRows


@dataclass
class Workload:
    """Data + model + loss + metric + target, ready to train.

    Attributes:
        name: the registry name.
        x_train, y_train, x_test, y_test: the data (dense tensors, or :class:`SparseRows`).
        num_classes: 2 means a binary problem with one logit.
        make_module: builds the (unseeded) model; use :meth:`make_model` for a seeded one.
        metric: the metric's name (``"accuracy"``); ``target`` its time-to-target value.
        l2: the L2 penalty λ/2‖θ‖² added to the objective (0 for the deep workloads).
        mu, L: strong-convexity and component-smoothness constants (convex workloads only).
        train_eval_size: how many training samples the reported training objective averages
            over (a fixed seeded subset; all of them when ``None``).
    """

    name: str
    x_train: Features
    y_train: torch.Tensor
    x_test: Features
    y_test: torch.Tensor
    num_classes: int
    make_module: Callable[[], nn.Module]
    metric: str = "accuracy"
    target: float = 0.0
    l2: float = 0.0
    mu: float | None = None
    L: float | None = None
    train_eval_size: int | None = 10_000
    options: dict[str, Any] = field(default_factory=dict)
    optimum_fn: Callable[[Workload], Any] | None = None
    cache_dir: Path | None = None  # where derived data (the optimum w*) is cached

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def convex(self) -> bool:
        return self.mu is not None

    def make_model(self, seed: int) -> nn.Module:
        """The model, initialised from ``seed`` (the global RNG is restored afterwards)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.make_module()

    def batch(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> Batch:
        """The training samples at ``idx`` (a 1-D int64 tensor)."""
        x = self.x_train.take(idx) if isinstance(self.x_train, SparseRows) else self.x_train[idx]
        return x.to(device), self.y_train[idx].to(device)

    def data_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.num_classes == 2:
            return F.binary_cross_entropy_with_logits(logits.squeeze(1), y.to(logits.dtype))
        return F.cross_entropy(logits, y)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training objective on a batch: mean loss plus λ/2 ‖θ‖² over all parameters."""
        value = self.data_loss(model(x), y)
        if self.l2:
            value = value + 0.5 * self.l2 * sum(p.pow(2).sum() for p in model.parameters())
        return value

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.num_classes == 2:
            return ((logits.squeeze(1) > 0).long() == y).sum()
        return (logits.argmax(1) == y).sum()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        """Test loss and metric, and the training objective on the fixed evaluation subset.

        The model is put in eval mode (BatchNorm uses its running statistics) and back; no
        random number is drawn, so evaluating never changes a run's trajectory.
        """
        was_training = model.training
        model.eval()
        try:
            test_loss, correct = self._sweep(model, self.x_test, self.y_test, None, device)
            n = self.train_eval_size
            idx = (
                None
                if n is None or n >= self.num_train
                else torch.randperm(self.num_train, generator=torch.Generator().manual_seed(0))[:n]
            )
            train_loss, _ = self._sweep(model, self.x_train, self.y_train, idx, device)
            if self.l2:
                train_loss += 0.5 * self.l2 * sum(float(p.pow(2).sum()) for p in model.parameters())
        finally:
            model.train(was_training)
        return {
            "train_loss": train_loss,
            "test_loss": test_loss,
            self.metric: correct / len(self.y_test),
        }

    def _sweep(
        self,
        model: nn.Module,
        x: Features,
        y: torch.Tensor,
        idx: torch.Tensor | None,
        device: torch.device | str,
    ) -> tuple[float, int]:
        """Mean loss and correct count over the rows ``idx`` (all rows when ``None``)."""
        n = len(y) if idx is None else len(idx)
        total, correct, chunk = 0.0, 0, 4096
        for start in range(0, n, chunk):
            rows = torch.arange(start, min(start + chunk, n))
            if idx is not None:
                rows = idx[rows]
            xb = x.take(rows) if isinstance(x, SparseRows) else x[rows]
            yb = y[rows].to(device)
            logits = model(xb.to(device))
            total += float(self.data_loss(logits, yb)) * len(rows)
            correct += int(self.correct(logits, yb))
        return total / n, correct

    def optimum(self) -> Any:
        """The minimiser w* of the training objective (convex workloads; computed once, cached)."""
        if self.optimum_fn is None:
            from sgdlab.errors import ConfigError

            raise ConfigError(f"workload {self.name!r} is not convex: it has no optimum w*")
        return self.optimum_fn(self)
