r"""Constants and the optimum of the L2-regularised logistic-regression workloads.

The objective is
:math:`F(\theta) = \frac1n \sum_i \ell(\theta; x_i, y_i) + \frac\lambda2\|\theta\|^2`
with :math:`\theta = (W, b)` and :math:`\ell` the logistic (binary) or softmax cross-entropy
(multinomial) loss of the logits :math:`W x + b`. Writing :math:`\tilde x = (x, 1)`:

* each component :math:`f_i = \ell_i + \frac\lambda2\|\theta\|^2` is convex, and
  :math:`F` is :math:`\mu`-strongly convex with :math:`\mu = \lambda`;
* the Hessian of :math:`\ell_i` is :math:`A \otimes \tilde x_i \tilde x_i^\top` with
  :math:`A = \sigma(1-\sigma) \le 1/4` (binary) or :math:`A = \mathrm{diag}(p) - pp^\top`, whose
  largest eigenvalue is at most :math:`1/2` (multinomial); so each component is
  :math:`L`-smooth with :math:`L = c\,\max_i \|\tilde x_i\|^2 + \lambda`, :math:`c` = 1/4 or 1/2.
  This is the component constant the bounds of Nguyen et al. need (every :math:`f_i`
  L-smooth), an upper bound on the smoothness of :math:`F` too.

The optimum :math:`\theta^*` is found once in float64 by full-batch L-BFGS with a strong-Wolfe
line search until the gradient norm is below ``grad_tol``, and cached on disk as a ``.npz``
(loaded with ``allow_pickle=False``), keyed by the data, the workload's options and λ.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgdlab.checkpoint import atomic_write_bytes
from sgdlab.workloads.base import SparseRows, Workload
from sgdlab.workloads.datasets import default_cache_dir


@dataclass(frozen=True)
class Optimum:
    """θ* (one float64 array per model parameter, in ``model.parameters()`` order) and F(θ*)."""

    params: tuple[np.ndarray, ...]
    loss: float
    grad_norm: float

    def flat(self) -> np.ndarray:
        return np.concatenate([p.ravel() for p in self.params])


def smoothness_bound(x: torch.Tensor | SparseRows, num_classes: int, l2: float) -> float:
    """L = c max_i ‖(x_i, 1)‖² + λ, with c = 1/4 (binary) or 1/2 (multinomial)."""
    norms = x.row_norms_sq() if isinstance(x, SparseRows) else x.flatten(1).double().pow(2).sum(1)
    c = 0.25 if num_classes == 2 else 0.5
    return c * (float(norms.max()) + 1.0) + l2


def _fingerprint(w: Workload) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps({"name": w.name, "l2": w.l2, "options": w.options}, sort_keys=True).encode()
    )
    parts = (
        [w.x_train.indptr, w.x_train.indices, w.x_train.data]
        if isinstance(w.x_train, SparseRows)
        else [w.x_train]
    )
    for t in [*parts, w.y_train]:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def compute_optimum(w: Workload, grad_tol: float = 1e-9, max_rounds: int = 200) -> Optimum:
    """Minimise the training objective in float64 with full-batch L-BFGS."""
    model = w.make_model(seed=0).double()
    for p in model.parameters():
        p.data.zero_()
    if isinstance(w.x_train, SparseRows):
        x = w.x_train.take(torch.arange(w.num_train)).double()
    else:
        x = w.x_train.double()
    y = w.y_train
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=100,
        history_size=50,
        tolerance_grad=grad_tol,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = w.loss(model, x, y)
        loss.backward()
        return loss

    grad_norm = float("inf")
    for _ in range(max_rounds):
        opt.step(closure)
        loss = closure()
        grad_norm = float(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()
        )
        if grad_norm <= grad_tol:
            break
    params = tuple(p.detach().numpy().copy() for p in model.parameters())
    return Optimum(params=params, loss=float(loss.detach()), grad_norm=grad_norm)


def cached_optimum(w: Workload, cache_dir: Path | None = None) -> Optimum:
    """:func:`compute_optimum`, computed once per data set and λ and kept on disk."""
    folder = cache_dir or w.cache_dir or default_cache_dir()
    path = folder / f"optimum-{w.name}-{_fingerprint(w)}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                count = int(z["count"])
                return Optimum(
                    params=tuple(z[f"p{i}"] for i in range(count)),
                    loss=float(z["loss"]),
                    grad_norm=float(z["grad_norm"]),
                )
        except Exception:  # noqa: BLE001 - whatever a corrupt .npz raises (BadZipFile, ...)
            path.unlink(missing_ok=True)  # corrupt cache (ours, derived): recompute below
    opt = compute_optimum(w)
    payload: dict[str, Any] = {f"p{i}": p for i, p in enumerate(opt.params)}
    payload.update(count=len(opt.params), loss=opt.loss, grad_norm=opt.grad_norm)
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    atomic_write_bytes(path, buffer.getvalue())
    return opt
