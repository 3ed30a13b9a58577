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

The optimum :math:`\theta^*` is found once in float64 by preconditioned trust-region Newton
(scipy's ``trust-ncg`` on the exact Hessian-vector product, see ``sgdlab.workloads._newton``)
until the gradient norm is at most ``grad_tol`` (1e-9): logreg-fmnist in 8.8 s, sparse-logreg
in 1.3 s, logreg-breast-cancer in 0.02 s on 2 shared cores (``benchmarks/results/optimum.md``).
It is cached on disk as a ``.npz`` (loaded with ``allow_pickle=False``), keyed by the data, the
workload's options, λ and the cache format; a corrupt file is recomputed. On an interactive
stderr a transient status line shows the iterations while it runs.

:func:`compute_optimum_lbfgs`, full-batch L-BFGS with a strong-Wolfe line search, is the method
it replaced, kept as the tests' oracle. It stalls at ‖∇F‖ ≈ 1e-9 to 6e-9 on small problems
(2e-9 on breast-cancer: its line search meets F's rounding) and was still above 1e-9 after
120 s on fmnist and sparse-logreg.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sgdlab.checkpoint import atomic_write_bytes
from sgdlab.errors import ConfigError, SolverError
from sgdlab.workloads.base import SparseRows, Workload
from sgdlab.workloads.datasets import default_cache_dir
from sgdlab.workloads.models import LinearClassifier

if TYPE_CHECKING:
    from sgdlab.workloads._newton import Progress

# Part of the cache key: a new format (or solver) never reads an old file.
_CACHE_FORMAT = 2


@dataclass(frozen=True)
class Optimum:
    """θ* (one float64 array per model parameter, in ``model.parameters()`` order), F(θ*),
    ‖∇F(θ*)‖ and the solver's iterations."""

    params: tuple[np.ndarray, ...]
    loss: float
    grad_norm: float
    iterations: int = 0

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
        json.dumps(
            {"name": w.name, "l2": w.l2, "options": w.options, "format": _CACHE_FORMAT},
            sort_keys=True,
        ).encode()
    )
    parts = (
        [w.x_train.indptr, w.x_train.indices, w.x_train.data]
        if isinstance(w.x_train, SparseRows)
        else [w.x_train]
    )
    for t in [*parts, w.y_train]:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def compute_optimum(
    w: Workload, grad_tol: float = 1e-9, max_rounds: int = 20, progress: bool | None = None
) -> Optimum:
    """θ* of a linear workload in float64, by preconditioned trust-region Newton.

    ``max_rounds`` bounds the preconditioner rebuilds (two suffice on every workload here);
    ``progress`` shows a transient status line on stderr (default: only when stderr is a
    terminal). Raises :class:`SolverError` unless ‖∇F(θ*)‖ ≤ ``grad_tol``.
    """
    # Imported here: scipy.optimize costs ~0.3 s, and most imports of the workloads never solve.
    from threadpoolctl import threadpool_limits

    from sgdlab.workloads._newton import LogisticObjective, newton_minimize

    shapes = [tuple(p.shape) for p in _linear_model(w).parameters()]
    # One BLAS thread: the products are memory-bound passes over X, and on a shared machine
    # a second thread that waits for a core made the fmnist solve 1.4-2x slower (8.5 s with
    # one thread, 11.6-17.7 s with two, at load 2.3 on 2 cores).
    with _status(w.name, progress) as report, threadpool_limits(limits=1, user_api="blas"):
        objective = LogisticObjective(w.x_train, w.y_train, w.num_classes, w.l2)
        result = newton_minimize(objective, grad_tol, max_rounds, progress=report)
    if not result.grad_norm <= grad_tol:
        raise SolverError(
            f"the optimum of workload {w.name!r} did not converge: gradient norm "
            f"{result.grad_norm:.3g} > {grad_tol:g} after {result.iterations} Newton iterations"
        )
    weight, bias = result.theta[:, :-1], result.theta[:, -1]
    params = (weight.reshape(shapes[0]).copy(), bias.reshape(shapes[1]).copy())
    return Optimum(params, result.loss, result.grad_norm, result.iterations)


def compute_optimum_lbfgs(
    w: Workload,
    grad_tol: float = 1e-9,
    max_rounds: int = 200,
    time_limit: float | None = None,
) -> Optimum:
    """θ* by full-batch L-BFGS (strong Wolfe) in float64: the method before, kept as an oracle.

    Stops at ‖∇F‖ ≤ ``grad_tol``, after ``max_rounds`` rounds of 100 iterations, or once
    ``time_limit`` seconds have passed (then ``grad_norm`` says how far it got).
    """
    model = _linear_model(w).double()
    for p in model.parameters():
        p.data.zero_()
    x = _train_rows_float64(w)
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
    deadline = None if time_limit is None else time.perf_counter() + time_limit

    def evaluate() -> torch.Tensor:
        opt.zero_grad()
        loss = w.loss(model, x, y)
        loss.backward()
        return loss

    def closure() -> torch.Tensor:
        if deadline is not None and time.perf_counter() > deadline:
            raise _TimeUp
        return evaluate()

    grad_norm, timed_out = float("inf"), False
    for _ in range(max_rounds):
        try:
            opt.step(closure)
        except _TimeUp:  # the parameters are where the line search stopped
            timed_out = True
        loss = evaluate()
        grad_norm = float(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()
        )
        if grad_norm <= grad_tol or timed_out:
            break
    iterations = int(opt.state[next(iter(model.parameters()))].get("n_iter", 0))
    params = tuple(p.detach().numpy().copy() for p in model.parameters())
    return Optimum(params, float(loss.detach()), grad_norm, iterations)


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
                    iterations=int(z["iterations"]),
                )
        except Exception:  # noqa: BLE001 - whatever a corrupt .npz raises (BadZipFile, ...)
            path.unlink(missing_ok=True)  # corrupt cache (ours, derived): recompute below
    opt = compute_optimum(w)
    payload: dict[str, Any] = {f"p{i}": p for i, p in enumerate(opt.params)}
    payload.update(
        count=len(opt.params), loss=opt.loss, grad_norm=opt.grad_norm, iterations=opt.iterations
    )
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    atomic_write_bytes(path, buffer.getvalue())
    return opt


class _TimeUp(Exception):
    """Raised inside the L-BFGS closure when ``time_limit`` has passed."""


@contextmanager
def _status(name: str, show: bool | None) -> Iterator[Progress | None]:
    """A transient rich status line on stderr while θ* is computed; nothing off a terminal."""
    stream = sys.stderr
    if show is None:
        show = bool(getattr(stream, "isatty", lambda: False)())
    if not show:
        yield None
        return
    from rich.console import Console

    label = f"computing w* of {name} (once; cached)"  # fits 80 columns with the longest name
    with Console(file=stream).status(f"{label} · preparing the data") as status:

        def report(iteration: int, loss: float, grad_norm: float) -> None:
            status.update(f"{label} · iteration {iteration} · ‖∇F‖ {grad_norm:.1e}")

        yield report


def autograd_check(w: Workload, opt: Optimum) -> tuple[float, float]:
    """F(θ*) and ‖∇F(θ*)‖ by the workload's own torch loss and autograd, in float64: a check
    of a solver's θ* that shares none of its code."""
    model = w.make_model(0).double()
    with torch.no_grad():
        for p, star in zip(model.parameters(), opt.params, strict=True):
            if p.shape != star.shape:
                raise ValueError(f"optimum has a part of shape {star.shape}, model {p.shape}")
            p.copy_(torch.from_numpy(star))
    loss = w.loss(model, _train_rows_float64(w), w.y_train)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return float(loss.detach()), float(torch.cat([g.flatten() for g in grads]).norm())


def _train_rows_float64(w: Workload) -> torch.Tensor:
    x = w.x_train
    return x.take(torch.arange(w.num_train)).double() if isinstance(x, SparseRows) else x.double()


def _linear_model(w: Workload) -> torch.nn.Module:
    model = w.make_model(seed=0)
    if not isinstance(model, LinearClassifier) or not w.l2 > 0:
        raise ConfigError(
            f"workload {w.name!r} has no optimum to compute: it needs a linear model and l2 > 0"
        )
    return model
