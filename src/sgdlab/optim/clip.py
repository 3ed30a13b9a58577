r"""Global gradient-norm clipping as an optimizer wrapper, with decoupled weight decay.

At each step, with :math:`g_t` the gradient of the caller's loss over all parameters,

.. math:: \hat g_t = g_t \min\Bigl(1, \frac{\text{max\_norm}}{\lVert g_t\rVert}\Bigr), \qquad
          \theta \leftarrow (1 - \eta\lambda)\,\theta, \qquad
          \theta \leftarrow \mathcal A(\theta, \hat g_t),

where :math:`\mathcal A` is the inner optimizer's step and :math:`\eta` its group's learning
rate. The norm is the global one (every parameter together, as
``torch.nn.utils.clip_grad_norm_`` takes it), the clip acts on ``p.grad`` in place (as that
function does in a user's loop: the gradients stay clipped after the step), and the weight
decay :math:`\lambda` is decoupled (SGDW/AdamW): it never enters the gradient, so it is not
clipped and not in the inner optimizer's buffers.

Around ``torch.optim.SGD`` with momentum :math:`m` (the registry's ``clip-sgd``) this is
:math:`b_t = m\,b_{t-1} + \hat g_t`, :math:`\theta_{t+1} = (1-\eta\lambda)\theta_t - \eta b_t`:
exactly what :class:`~sgdlab.optim.MLBFGS` does before its first curvature pair (and ever
after, without pairs), at SGD's cost per step: the fair baseline for what mL-BFGS's clip
alone buys.

The clip reads no value back from the device: the scale is a tensor
(``torch.where(norm > max_norm, max_norm / norm, 1)``). ``state_dict()`` holds torch's
``state`` (the number of steps and of clipped steps, under the first parameter) and
``param_groups`` at the top, the inner optimizer's own state dict beside them, and the
settings a checkpoint must be resumed with; a mid-run checkpoint resumes bit for bit.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    >>> opt = ClipGradNorm(torch.optim.SGD([w], lr=0.1), max_norm=1.0)
    >>> (w ** 2).sum().backward()  # gradient (6, 8), norm 10
    >>> _ = opt.step()
    >>> w.detach()  # moved by 0.1 * (0.6, 0.8)
    tensor([2.9400, 3.9200])
    >>> opt.clip_stats()
    {'steps': 1, 'clipped_steps': 1}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from sgdlab.optim._inner_step import inner_step
from sgdlab.optim._wrapper import InnerWrapper
from sgdlab.optim.registry import SINGLE_PASS_OPTIMIZERS

__all__ = ["ClipGradNorm", "clipped_sgd"]


class ClipGradNorm(InnerWrapper):
    """Clip the global gradient norm to ``max_norm`` before each step of ``inner``.

    Args:
        inner: an already-constructed optimizer over the parameters to train. The wrapper's
            ``param_groups`` *are* the inner's (the same list), so an LR scheduler built on the
            wrapper reaches the inner step.
        max_norm: the clip, > 0; ``None`` for none (the wrapper then only adds the decay).
        weight_decay: decoupled weight decay :math:`\\lambda \\ge 0`, applied as
            :math:`\\theta \\leftarrow (1 - \\eta\\lambda)\\theta` with each group's lr just
            before the inner step; it needs an inner optimizer that evaluates a closure once
            (torch's first-order ones), so the gradient is taken before the decay.

    Precondition: call ``loss.backward()`` (or pass a closure) before :meth:`step`. With a
    closure and an inner optimizer that evaluates it more than once (L-BFGS), every
    evaluation's gradient is clipped.
    """

    _settings = ("max_norm", "weight_decay")

    def __init__(
        self, inner: Optimizer, max_norm: float | None = 0.3, weight_decay: float = 0.0
    ) -> None:
        if not isinstance(inner, Optimizer):
            raise TypeError(f"Invalid inner: expected a torch.optim.Optimizer, got {inner!r}")
        if max_norm is not None and not (_real(max_norm) and 0.0 < max_norm < math.inf):
            raise ValueError(f"Invalid max_norm: {max_norm}")
        if not (_real(weight_decay) and 0.0 <= weight_decay < math.inf):
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        if weight_decay != 0.0 and type(inner) not in SINGLE_PASS_OPTIMIZERS:
            raise ValueError(
                f"Invalid weight_decay: {weight_decay} (decoupled decay needs an inner "
                f"optimizer that evaluates a closure once, not {type(inner).__name__})"
            )
        self.max_norm = None if max_norm is None else float(max_norm)
        self.weight_decay = float(weight_decay)
        super().__init__(inner, dict(inner.defaults))  # shares the inner's groups

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Clip the gradients, decay the parameters, take the inner step; return the loss."""
        loss, closure = self._evaluate_once(closure)
        glob = self._global_state()
        glob["step"] += 1
        if closure is None:
            self._clip(glob)
            self._decay()
            inner_loss = inner_step(self.inner)
        else:
            def clipped_closure() -> Any:
                value = closure()
                with torch.no_grad():
                    self._clip(glob)
                return value

            inner_loss = inner_step(self.inner, clipped_closure)
        return loss if loss is not None else inner_loss

    def clip_stats(self) -> dict[str, int]:
        """``steps`` taken and ``clipped_steps`` (those whose norm exceeded ``max_norm``;
        with a multi-evaluation inner optimizer, evaluations); reads the counter back."""
        glob = self._global_state()
        return {"steps": int(glob["step"]), "clipped_steps": int(glob["clipped_steps"])}

    # -- the method ----------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {"inner": type(self.inner).__name__, "max_norm": self.max_norm,
                "weight_decay": self.weight_decay}

    def _global_state(self) -> dict[str, Any]:
        # The counters belong to the optimizer, not to one tensor; under the first parameter
        # (as torch.optim.LBFGS keeps its own) they travel with state_dict().
        p = self.param_groups[0]["params"][0]
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            state["clipped_steps"] = torch.zeros((), dtype=torch.long, device=p.device)
        return state

    def _clip(self, glob: dict[str, Any]) -> None:
        if self.max_norm is None:
            return
        grads = [p.grad for p in self._params() if p.grad is not None]
        if not grads:
            return
        if any(g.is_sparse for g in grads):
            raise RuntimeError("ClipGradNorm does not support sparse gradients")
        norm = torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g).to(grads[0].dtype) for g in grads]))
        over = norm > self.max_norm
        glob["clipped_steps"] = glob["clipped_steps"] + over
        scale = torch.where(over, self.max_norm / norm, 1.0)
        casts = {dtype: scale.to(dtype) for dtype in {g.dtype for g in grads}}
        torch._foreach_mul_(grads, [casts[g.dtype] for g in grads])

    def _decay(self) -> None:
        if self.weight_decay == 0.0:
            return
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:  # float(): a one-element tensor lr is read as a number
                torch._foreach_mul_(params, 1.0 - float(group["lr"]) * self.weight_decay)

    def _restore(self, value: Any, param: Tensor) -> Any:
        return value.to(param.device) if isinstance(value, Tensor) else value


def clipped_sgd(
    params: Iterable[Any],
    lr: float = 0.1,
    momentum: float = 0.9,
    max_norm: float | None = 0.3,
    weight_decay: float = 0.0,
) -> ClipGradNorm:
    """SGD with heavy ball on the clipped gradient and decoupled weight decay (the registry's
    ``clip-sgd``): :class:`ClipGradNorm` around ``torch.optim.SGD(params, lr, momentum)``.
    The defaults are :class:`~sgdlab.optim.MLBFGSConfig`'s, so ``clip-sgd`` is mL-BFGS
    without curvature pairs."""
    return ClipGradNorm(torch.optim.SGD(params, lr=lr, momentum=momentum),
                        max_norm=max_norm, weight_decay=weight_decay)


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
