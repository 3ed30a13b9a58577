r"""Step-size schedules: the diminishing step of the S1 analysis, and the warm-up then step
decay of deep-learning practice (:class:`WarmupStepDecay`, a ``LambdaLR`` factor).

:class:`DiminishingLR` is the diminishing step of Nguyen et al. (ICML 2018), "SGD and Hogwild!
convergence without the bounded gradients assumption":

.. math::

    \eta_t = \frac{\alpha}{\mu (t + E)}, \qquad \alpha > 1, \qquad E \ge \frac{2 \alpha L}{\mu},

for an objective that is :math:`\mu`-strongly convex with :math:`L`-smooth components. The
default :math:`E = 2\alpha L/\mu` is the least that keeps the first step
:math:`\eta_0 = \alpha/(\mu E) \le 1/(2L)`, which the analysis needs at every step; with it,
:math:`\mathbb{E}\|w_t - w^*\|^2 \le C/(t+E)` (see ``sgdlab.theory.sgd_bounds``).

Example:
    >>> import torch
    >>> w = torch.zeros(3, requires_grad=True)
    >>> opt = torch.optim.SGD([w], lr=1.0)
    >>> sched = DiminishingLR(opt, mu=0.1, L=1.0)
    >>> round(opt.param_groups[0]["lr"], 6)  # alpha / (mu * E) = 2 / (0.1 * 40) = 1/(2L)
    0.5
    >>> opt.step(); sched.step()
    >>> round(opt.param_groups[0]["lr"], 6)  # 2 / (0.1 * 41)
    0.487805
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def _check_positive_finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"Invalid {name}: {value} (must be a positive finite number)")
    return value


class DiminishingLR(LRScheduler):
    """η_t = α / (μ (t + E)) for every parameter group; t counts ``step()`` calls.

    Args:
        optimizer: the wrapped optimizer; its groups' ``lr`` are overwritten.
        mu: strong-convexity constant μ > 0 of the objective.
        L: smoothness constant L ≥ μ of the components.
        alpha: α > 1 (the analysis needs α > 1; α = 2 is the usual choice).
        E: the offset; defaults to 2αL/μ. A smaller E makes η_0 > 1/(2L) and is refused.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mu: float,
        L: float,
        alpha: float = 2.0,
        E: float | None = None,
        last_epoch: int = -1,
    ) -> None:
        self.mu = _check_positive_finite("mu", mu)
        self.L = _check_positive_finite("L", L)
        self.alpha = _check_positive_finite("alpha", alpha)
        if self.alpha <= 1.0:
            raise ValueError(f"Invalid alpha: {alpha} (the diminishing-step bound needs alpha > 1)")
        if self.mu > self.L:
            raise ValueError(
                f"Invalid mu, L: mu={mu} exceeds L={L} (strong convexity needs mu <= L)"
            )
        least_E = 2.0 * self.alpha * self.L / self.mu
        if E is None:
            self.E = least_E
        else:
            self.E = _check_positive_finite("E", E)
            # A relative tolerance: an E computed by hand must not be refused for rounding.
            if self.E < least_E * (1.0 - 1e-12):
                raise ValueError(
                    f"Invalid E: {E} (needs E >= 2*alpha*L/mu = {least_E:g} "
                    "so that eta_0 <= 1/(2L))"
                )
        super().__init__(optimizer, last_epoch)

    def eta(self, t: int) -> float:
        """The step size at step ``t``."""
        return self.alpha / (self.mu * (t + self.E))

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [self.eta(self.last_epoch) for _ in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


@dataclass(frozen=True)
class WarmupStepDecay:
    """The learning-rate factor at step ``t`` (a ``LambdaLR`` lambda): linear warm-up over
    ``warmup`` steps, :math:`\\min(1, (t+1)/\\text{warmup})`, then times ``gamma`` for each
    milestone passed. ``LambdaLR`` keeps its fields in its ``state_dict``.

    >>> f = WarmupStepDecay(4, (10, 20), 0.1)
    >>> [round(f(t), 4) for t in (0, 3, 9, 10, 25)]
    [0.25, 1.0, 1.0, 0.1, 0.01]
    """

    warmup: int
    milestones: tuple[int, ...]
    gamma: float

    def __call__(self, t: int) -> float:
        ramp = min(1.0, (t + 1) / self.warmup) if self.warmup > 0 else 1.0
        return ramp * self.gamma ** sum(t >= m for m in self.milestones)
