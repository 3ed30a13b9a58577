r"""Overlap Local-SGD (Wang, Liang, Joshi, ICASSP 2020): communication hidden behind local steps.

Each worker keeps its model :math:`x_i` and an anchor :math:`z` (the same on every rank). Every
:math:`\tau` local steps, at round :math:`k`:

1. wait for the all-reduce started at round :math:`k-1`; it averaged the pulled-back models
   :math:`\bar x = \frac1W\sum_i x_i` and gives the anchor
   :math:`z_k = \bar x` (no momentum), or with anchor momentum :math:`\beta > 0`

   .. math:: v \leftarrow \beta v + (z_{k-1} - \bar x)/\gamma, \qquad
             z_k = z_{k-1} - \gamma v,

   :math:`\gamma` being the inner optimizer's current lr (so :math:`v` is in gradient units;
   with a constant lr :math:`z_k = \bar x - \beta\gamma v_{\text{old}}`, the heavy-ball anchor);
2. pull back: :math:`x_i \leftarrow x_i - \alpha (x_i - z_k)`;
3. start a non-blocking all-reduce of the pulled-back :math:`x_i` (copied), and return to
   computing; it has :math:`\tau` local steps to finish before round :math:`k+1` needs it.

The anchor's momentum acts on the parameters only. The floating-point buffers (BatchNorm's
running statistics) are averaged and pulled back like the parameters, but their anchor is the
plain mean :math:`\bar x`: a heavy-ball extrapolation of a running variance can go negative
(on cnn-fmnist at τ = 8, β = 0.7, it did in the first rounds, and the model in eval mode then
scored at chance), while a mean and a pull-back (α ≤ 1) are convex combinations and keep it
valid. The authors' code (``JYWa/Overlap_Local_SGD``) averages, pulls back and extrapolates the
parameters only and leaves the buffers local to each worker; we average them as every
algorithm here does (:mod:`sgdlab.distributed.core`), so that the replicas evaluate alike.

Before the first all-reduce the anchor is the initial model (the same on all ranks). Local
models are pulled toward an anchor one round stale, and communication is hidden whenever an
all-reduce takes no longer than :math:`\tau` local steps; a straggler delays the others only by
what its lateness exceeds that slack.

>>> import torch
>>> model = torch.nn.Linear(2, 1)
>>> opt = OverlapLocalSGD(model, torch.optim.SGD(model.parameters(), lr=0.1), tau=2, alpha=0.6)
>>> for _ in range(4):
...     model(torch.ones(1, 2)).sum().backward(); _ = opt.step(); opt.zero_grad()
>>> len(opt.rounds), opt.pending
(2, True)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sgdlab.distributed.comm import Comm
from sgdlab.distributed.core import InFlightAverage, clone_all, copy_all


class OverlapLocalSGD(InFlightAverage):
    """Local steps pulled toward a one-round-stale anchor averaged in the background."""

    def __init__(
        self, model: nn.Module, inner: torch.optim.Optimizer, tau: int = 2, alpha: float = 0.6,
        anchor_momentum: float = 0.0, comm: Comm | None = None,
    ) -> None:
        if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
            raise ValueError(f"Invalid alpha: {alpha} (need 0 <= alpha <= 1)")
        if not (math.isfinite(anchor_momentum) and 0.0 <= anchor_momentum < 1.0):
            raise ValueError(f"Invalid anchor_momentum: {anchor_momentum} (need 0 <= beta < 1)")
        super().__init__(model, inner, tau=tau, comm=comm)
        self.alpha = alpha
        self.anchor_momentum = anchor_momentum
        self.anchor = clone_all(self.tensors)
        # One velocity per synchronised tensor (the checkpoint's layout); the buffers' stay 0.
        self.velocity = [torch.zeros_like(t) for t in self.tensors] if anchor_momentum else []
        self._n_params = sum(1 for _ in model.parameters())

    def _round(self) -> None:
        mean = self._take_result()
        if mean is not None:
            self._update_anchor(mean)
        for x, z in zip(self.tensors, self.anchor, strict=True):
            x.sub_(self.alpha * (x - z))
        self._handle = self._start(self.tensors)

    def _update_anchor(self, mean: list[torch.Tensor]) -> None:
        beta = self.anchor_momentum
        if not beta:
            copy_all(self.anchor, mean)
            return
        gamma = float(self.param_groups[0]["lr"]) or 1.0
        n = self._n_params
        for z, v, m in zip(self.anchor[:n], self.velocity[:n], mean[:n], strict=True):
            v.mul_(beta).add_((z - m) / gamma)
            z.sub_(gamma * v)
        copy_all(self.anchor[n:], mean[n:])  # buffers: the plain mean, never extrapolated

    def _extra_state(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha, "anchor_momentum": self.anchor_momentum,
            "anchor": clone_all(self.anchor), "velocity": clone_all(self.velocity),
            **self._pending_state(),
        }

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        copy_all(self.anchor, extra["anchor"])
        if self.velocity:
            copy_all(self.velocity, extra["velocity"])
        self._load_pending_state(extra)
