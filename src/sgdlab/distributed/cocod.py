r"""CoCoD-SGD (Shen et al., IJCAI 2019): computation and communication decoupled.

Every :math:`\tau` local steps, at round :math:`k`, worker :math:`i` holding the snapshot
:math:`s_i` it took at round :math:`k-1`:

1. waits for the all-reduce of the snapshots started then, :math:`\bar s = \frac1W\sum_j s_j`;
2. keeps its own progress since and adds it to the stale average:
   :math:`x_i \leftarrow \bar s + (x_i - s_i)`;
3. takes a new snapshot :math:`s_i \leftarrow x_i` and starts its non-blocking all-reduce.

The mean model is unchanged by step 2 (:math:`\frac1W\sum_i x_i` is preserved), while the
workers' disagreement shrinks to one round of local progress. At the first round there is
nothing to wait for (all snapshots would be the initial model, the same on every rank).

>>> import torch
>>> model = torch.nn.Linear(2, 1)
>>> opt = CoCoDSGD(model, torch.optim.SGD(model.parameters(), lr=0.1), tau=1)
>>> for _ in range(3):
...     model(torch.ones(1, 2)).sum().backward(); _ = opt.step(); opt.zero_grad()
>>> len(opt.rounds)
3
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sgdlab.distributed.comm import Comm
from sgdlab.distributed.core import InFlightAverage, clone_all, copy_all


class CoCoDSGD(InFlightAverage):
    """The stale average plus each worker's own progress since, averaged in the background."""

    def __init__(
        self, model: nn.Module, inner: torch.optim.Optimizer, tau: int = 1, comm: Comm | None = None
    ) -> None:
        super().__init__(model, inner, tau=tau, comm=comm)
        self.snapshot = clone_all(self.tensors)

    def _round(self) -> None:
        mean = self._take_result()
        if mean is not None:
            for x, s, m in zip(self.tensors, self.snapshot, mean, strict=True):
                x.add_(m - s)
        copy_all(self.snapshot, self.tensors)
        self._handle = self._start(self.tensors)

    def _extra_state(self) -> dict[str, Any]:
        return {"snapshot": clone_all(self.snapshot), **self._pending_state()}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        copy_all(self.snapshot, extra["snapshot"])
        self._load_pending_state(extra)
