r"""torch's own Local SGD, as a contender: ``PeriodicModelAverager`` as
``PostLocalSGDOptimizer`` drives it.

``torch.distributed.optim.PostLocalSGDOptimizer.step()`` is two lines: ``optim.step()``, then
``averager.average_parameters(param_groups)``. A ``PeriodicModelAverager(period, warmup_steps)``
counts its calls from 0 and, at the calls :math:`s \ge` ``warmup_steps`` with
:math:`(s - \text{warmup}) \bmod \text{period} = 0`, all-reduces the parameters: flattened with
``torch.cat``, divided by :math:`W`, summed, and the parameters' ``.data`` set to views of that
one buffer.

This wrapper runs those two lines with torch's own averager (built by
:meth:`~sgdlab.distributed.comm.Comm.periodic_averager`) and our inner step, so hooks fire as for
every algorithm here. It uses ``period = tau`` and ``warmup_steps = tau - 1``: torch's averager
then averages after local steps :math:`\tau, 2\tau, \dots` (counted from 1), as
:class:`~sgdlab.distributed.LocalSGD` does; with ``warmup_steps = 0`` it would average after
steps :math:`1, 1 + \tau, \dots`. (In torch's recipe the warm-up steps run DDP's gradient
all-reduce; without DDP, as here, they are plain local steps.)

Configured so, it *is* :class:`~sgdlab.distributed.LocalSGD` bit for bit when the world size is
a power of two and the model has no floating-point buffers: dividing by :math:`2^k` is exact in
binary floating point, so :math:`\sum_i (x_i/W)` rounds exactly as :math:`(\sum_i x_i)/W`
(gloo sums both buffers, of the same size, in the same order). Where torch differs, kept as
torch does it: the mean is :math:`\sum_i x_i/W` (other world sizes: equal up to rounding); only
parameters with a gradient are averaged, floating-point buffers (BatchNorm statistics) stay
local until :meth:`synchronize`; complex parameters are refused.

>>> import torch
>>> model = torch.nn.Linear(2, 1)
>>> opt = TorchPostLocalSGD(model, torch.optim.SGD(model.parameters(), lr=0.1), tau=2)
>>> for _ in range(4):
...     model(torch.ones(1, 2)).sum().backward(); _ = opt.step(); opt.zero_grad()
>>> len(opt.rounds)
2
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sgdlab.distributed.comm import Comm
from sgdlab.distributed.core import CooperativeSGD


class TorchPostLocalSGD(CooperativeSGD):
    """``tau`` local steps of ``inner``, then torch's ``PeriodicModelAverager`` averages."""

    def __init__(
        self, model: nn.Module, inner: torch.optim.Optimizer, tau: int = 2, comm: Comm | None = None
    ) -> None:
        if any(p.is_complex() for p in model.parameters()):
            raise ValueError("Invalid model: torch's model averager does not take complex "
                             "parameters")
        super().__init__(model, inner, tau=tau, comm=comm)
        # None with no process group (one rank): there is nothing to average.
        self.averager = self.comm.periodic_averager(period=tau, warmup_steps=tau - 1)

    def _local_step(self, closure: Callable[[], Any] | None) -> Any:
        loss = super()._local_step(closure)
        if self.averager is not None:
            seconds = self.comm.run_averager(self.averager, self.param_groups)
            self._round_wait += seconds  # a blocking collective: all of it waited for
            self._round_comm += seconds
        return loss

    def _round(self) -> None:
        """Nothing: torch's averager averaged in this round's last local step."""

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        # PostLocalSGDOptimizer saves the averager's call count; here it is the step counter.
        if self.averager is not None:
            self.averager.step = self.local_steps
