r"""Local SGD: :math:`\tau` local steps, then a blocking average of the models.

.. math:: x_i \leftarrow \text{inner}(x_i, \nabla f(x_i; \xi_i)) \ \ (\tau \text{ times}), \qquad
          x_i \leftarrow \frac1W \sum_j x_j.

Communication drops :math:`\tau`-fold against :class:`SyncSGD`, but every round still blocks
until the average arrives (Stich, 2019; Lin et al., 2020). After a round all ranks hold the same
model. With :math:`\tau = 1` and plain SGD it is synchronous SGD up to floating-point rounding.

>>> import torch
>>> model = torch.nn.Linear(2, 1)
>>> opt = LocalSGD(model, torch.optim.SGD(model.parameters(), lr=0.1), tau=2)
>>> for _ in range(4):
...     model(torch.ones(1, 2)).sum().backward(); _ = opt.step(); opt.zero_grad()
>>> len(opt.rounds)
2
"""

from __future__ import annotations

import torch
from torch import nn

from sgdlab.distributed.comm import Comm
from sgdlab.distributed.core import CooperativeSGD, copy_all


class LocalSGD(CooperativeSGD):
    """``tau`` local steps of ``inner``, then a blocking model average."""

    def __init__(
        self, model: nn.Module, inner: torch.optim.Optimizer, tau: int = 1, comm: Comm | None = None
    ) -> None:
        super().__init__(model, inner, tau=tau, comm=comm)

    def _round(self) -> None:
        copy_all(self.tensors, self._average_now())
