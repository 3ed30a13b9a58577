r"""Elastic averaging SGD (Zhang, Choromanska, LeCun, NeurIPS 2015), synchronous form.

Every :math:`\tau` local steps, with the center variable :math:`\tilde x` (held identically by
every rank) and the models :math:`x_i` before the round,

.. math:: x_i \leftarrow x_i - \alpha (x_i - \tilde x), \qquad
          \tilde x \leftarrow \tilde x + \alpha \sum_{i=1}^W (x_i - \tilde x)
          = \tilde x + \alpha W (\bar x - \tilde x),

with :math:`\bar x` the mean of the models: one blocking all-reduce per round. The center moves
toward the workers by :math:`\beta = \alpha W`; the paper keeps :math:`\beta` near 0.9 and the
symmetric elastic force is stable only for :math:`\alpha W \le 1`, so a larger value warns.

>>> import torch
>>> model = torch.nn.Linear(2, 1)
>>> opt = EASGD(model, torch.optim.SGD(model.parameters(), lr=0.1), tau=1, alpha=0.5)
>>> model(torch.ones(1, 2)).sum().backward(); _ = opt.step()
>>> bool(torch.allclose(opt.center[0], model.weight))  # one rank: both meet in the middle
True
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from sgdlab.distributed.comm import Comm
from sgdlab.distributed.core import CooperativeSGD, clone_all, copy_all


class EASGD(CooperativeSGD):
    """Workers and a center variable pulled toward each other every ``tau`` steps."""

    def __init__(
        self, model: nn.Module, inner: torch.optim.Optimizer, tau: int = 1, alpha: float = 0.1,
        comm: Comm | None = None,
    ) -> None:
        if not (math.isfinite(alpha) and 0.0 < alpha <= 1.0):
            raise ValueError(f"Invalid alpha: {alpha} (need 0 < alpha <= 1)")
        super().__init__(model, inner, tau=tau, comm=comm)
        if alpha * self.comm.world_size > 1.0:
            warnings.warn(
                f"EASGD with alpha {alpha} and world size {self.comm.world_size}: "
                f"alpha * W = {alpha * self.comm.world_size:.2f} > 1 makes the center overshoot",
                stacklevel=2,
            )
        self.alpha = alpha
        self.center = clone_all(self.tensors)

    def _round(self) -> None:
        mean = self._average_now()
        scale = self.alpha * self.comm.world_size
        for x, c, m in zip(self.tensors, self.center, mean, strict=True):
            x.sub_(self.alpha * (x - c))
            c.add_(scale * (m - c))

    def _extra_state(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "center": clone_all(self.center)}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        copy_all(self.center, extra["center"])
