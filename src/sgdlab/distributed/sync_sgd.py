r"""Fully synchronous SGD: gradients averaged over the ranks before every step.

.. math:: g = \frac1W \sum_{i=1}^W \nabla f(x; \xi_i), \qquad x \leftarrow \text{inner}(x, g).

The baseline every communication-saving method is measured against: one blocking all-reduce
per step, so nothing is hidden. Floating-point buffers (BatchNorm statistics) travel in the
same all-reduce and are set to their mean, so every rank holds the same model after every step.
With a ``closure`` it is called once (the gradients it leaves are averaged), then the inner
step runs without it; inner optimizers that re-evaluate the closure (L-BFGS) would evaluate
unaveraged gradients, so they are refused.

>>> import torch
>>> model = torch.nn.Linear(2, 1)
>>> opt = SyncSGD(model, torch.optim.SGD(model.parameters(), lr=0.1))
>>> model(torch.ones(1, 2)).sum().backward(); _ = opt.step(); opt.zero_grad()
>>> opt.local_steps, len(opt.rounds)
(1, 1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sgdlab.distributed.comm import Comm
from sgdlab.distributed.core import CooperativeSGD, real_view
from sgdlab.optim._inner_step import inner_step


class SyncSGD(CooperativeSGD):
    """Gradients all-reduced every step (a round per step)."""

    def __init__(
        self, model: nn.Module, inner: torch.optim.Optimizer, comm: Comm | None = None
    ) -> None:
        if isinstance(inner, torch.optim.LBFGS):
            raise ValueError("Invalid inner optimizer: LBFGS re-evaluates its closure")
        super().__init__(model, inner, tau=1, comm=comm)
        self._buffers = self.tensors[len(list(model.parameters())):]

    def _local_step(self, closure: Callable[[], Any] | None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Every rank trains the same parameters, so one that takes no gradient (frozen) has
        # none anywhere and stays out; one that took none here (unused in this forward pass)
        # may have one elsewhere, and counts as zero in the mean.
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        if any(p.grad is not None and p.grad.is_sparse for p in params):
            raise RuntimeError(
                "SyncSGD does not support sparse gradients: it all-reduces dense ones"
            )
        grads = [real_view(p.grad) if p.grad is not None else real_view(torch.zeros_like(p))
                 for p in params]
        if not grads and not self._buffers:  # nothing trains, on any rank
            with torch.enable_grad():
                inner_step(self.inner)
            return loss
        means = self._average_list(grads + self._buffers)
        for p, g in zip(params, means, strict=False):
            if p.grad is None:
                p.grad = torch.view_as_complex(g.clone()) if p.is_complex() else g
            else:
                real_view(p.grad).copy_(g)
        for b, m in zip(self._buffers, means[len(params):], strict=True):
            b.copy_(m)
        with torch.enable_grad():
            inner_step(self.inner)
        return loss

    def _average_list(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return self._finish(self._start(tensors))

    def _round(self) -> None:
        """Nothing more: the step itself communicated."""
