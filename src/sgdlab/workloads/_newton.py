r"""The optimum of an L2-regularised logistic workload by preconditioned trust-region Newton.

**Objective** (exactly :meth:`Workload.loss` of a :class:`LinearClassifier`, in float64): with
:math:`\Theta = [W \mid b] \in \mathbb R^{K \times (d+1)}` and :math:`\tilde x = (x, 1)`,

.. math::

    F(\Theta) = \frac1n \sum_i \ell(\Theta \tilde x_i, y_i) + \frac\lambda2 \|\Theta\|^2,

:math:`\ell(z, y) = \log(1 + e^z) - yz` for one logit (:math:`K = 1`, binary) and
:math:`\log\sum_k e^{z_k} - z_y` for :math:`K \ge 3` classes; λ applies to the bias too.

**Derivatives.** With :math:`R_i = \sigma(z_i) - y_i` or :math:`\mathrm{softmax}(z_i) - e_{y_i}`,
:math:`\nabla F = R^\top \tilde X / n + \lambda\Theta`. The Hessian applied to a direction
:math:`V` is :math:`H[V] = D^\top \tilde X / n + \lambda V` with :math:`\delta z_i = V \tilde x_i`
and :math:`D_i = A_i\,\delta z_i`, where :math:`A_i = \sigma'(z_i)` (binary) or
:math:`\mathrm{diag}(p_i) - p_i p_i^\top` (multinomial). Each costs two passes over
:math:`X`; the loss and gradient are float64, the Hessian products of dense data run in float32
(a Newton direction needs only an approximate Hessian; the stopping test uses the float64
gradient).

**Solver.** scipy's ``trust-ncg`` (Steihaug-CG trust-region Newton, Nocedal & Wright Alg. 7.2)
on the exact Hessian-vector product, in preconditioned coordinates
:math:`\Theta = \Theta_0 + M u` with :math:`M^{-\top} M^{-1} = P \approx H(\Theta_0)`. At the
fmnist optimum, CG needs 124 Hessian products to shrink a residual 10⁴-fold without ``P``, 71
with the Kronecker form alone, and 15 with ``P`` as below. ``P`` is

* dense data (:math:`d + 1 \le` 4096): in the principal basis :math:`U` of
  :math:`C = \tilde X^\top \tilde X / n` (estimated on at most 16,384 rows), the *exact*
  Hessian on the ``rank`` = 64 leading directions (a :math:`Kr \times Kr` Cholesky), and the
  Kronecker form :math:`\bar A \otimes \mathrm{diag}(c_j) + \lambda I` on the others,
  :math:`\bar A = \frac1n\sum_i A_i`, :math:`c_j` the eigenvalues of :math:`C` (K-FAC's
  approximation, Martens & Grosse 2015). At :math:`\Theta = 0` every :math:`A_i` is the same, so
  the Kronecker form is already the Hessian and the first round skips the exact block;
* sparse or wide data: the diagonal of :math:`H`.

``P`` is built at :math:`\Theta = 0`, rebuilt once when the gradient norm has fallen 100-fold,
and again only if trust-ncg stops short of the tolerance (each is a *round*).

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(200, 5, generator=g)
>>> y = (x[:, 0] + 0.5 * torch.randn(200, generator=g) > 0).long()
>>> result = newton_minimize(LogisticObjective(x, y, num_classes=2, l2=0.1), grad_tol=1e-10)
>>> result.grad_norm <= 1e-10, result.theta.shape
(True, (1, 6))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse as sp
import torch
from scipy.special import expit, logsumexp

from sgdlab.workloads.base import SparseRows

Progress = Callable[[int, float, float], None]  # (iteration, F, ‖∇F‖)

_RANK = 64  # leading principal directions with an exact Hessian block
_MAX_DENSE = 4096  # widest dense data (d + 1) preconditioned in the principal basis
_BASIS_ROWS = 16_384  # rows that estimate the principal basis
_REFRESH = 1e-2  # rebuild P when ‖∇F‖ has fallen by this factor


@dataclass(frozen=True)
class NewtonResult:
    """Θ = [W | b] (K × (d+1), float64), F(Θ), ‖∇F(Θ)‖ and the work it took."""

    theta: np.ndarray
    loss: float
    grad_norm: float
    iterations: int  # trust-region iterations, all rounds
    rounds: int
    hessian_products: int
    gradients: int


class LogisticObjective:
    """F, ∇F and H[V] of the L2-regularised logistic loss (module docstring), in numpy.

    ``x`` is a dense tensor (flattened per row) or :class:`SparseRows`; ``y`` holds labels
    ``0..num_classes-1``; ``num_classes == 2`` means one logit.
    """

    def __init__(
        self, x: torch.Tensor | SparseRows, y: torch.Tensor, num_classes: int, l2: float
    ) -> None:
        if isinstance(x, SparseRows):
            data = x.data.numpy().astype(np.float64)
            self.x: Any = sp.csr_matrix((data, x.indices.numpy(), x.indptr.numpy()), x.shape)
            self.x_hv: Any = self.x
        else:
            rows = x.detach().flatten(1)
            self.x = rows.double().contiguous().numpy()  # exact: the data are float32 or 64
            self.x_hv = rows.float().contiguous().numpy()  # no copy for float32 data
        self.sparse = isinstance(x, SparseRows)
        self.n, self.d = self.x.shape
        self.k = 1 if num_classes == 2 else num_classes
        self.y = y.numpy().astype(np.int64)
        self.lam = float(l2)
        self.hessian_products = 0
        self.gradients = 0
        self._basis: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.k, self.d + 1

    def logits(self, theta: np.ndarray) -> np.ndarray:
        """``X̃ Θᵀ`` (n × K), float64."""
        return np.asarray(self.x @ theta[:, :-1].T) + theta[:, -1]

    def loss_grad(self, theta: np.ndarray, z: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """F, ∇F and the curvature (σ'(z), or the softmax p) at Θ, whose logits are ``z``."""
        self.gradients += 1
        n, rows = self.n, np.arange(self.n)
        if self.k == 1:
            terms = np.logaddexp(0.0, z[:, 0]) - self.y * z[:, 0]
            p = expit(z)
            resid = p - self.y[:, None]
            curv = p * (1.0 - p)
        else:
            lse = logsumexp(z, axis=1)
            terms = lse - z[rows, self.y]
            curv = np.exp(z - lse[:, None])
            resid = curv.copy()
            resid[rows, self.y] -= 1.0
        loss = math.fsum(terms) / n + 0.5 * self.lam * float(np.sum(theta * theta))
        grad = np.empty_like(theta)
        grad[:, :-1] = np.asarray(self.x.T @ resid).T / n
        grad[:, -1] = resid.sum(0) / n
        return loss, grad + self.lam * theta, curv

    def value_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad, _ = self.loss_grad(theta, self.logits(theta))
        return loss, grad

    def loss_change(
        self, theta: np.ndarray, z: np.ndarray, delta: np.ndarray, dz: np.ndarray
    ) -> float:
        """F(Θ + Δ) − F(Θ), from the logits ``z`` of Θ and ``dz`` of Δ, to its own precision.

        Near the optimum a step lowers F by less than F's rounding (ε·F ≈ 1e-17); trust-ncg
        would then see no decrease and stop. Per row, ``ℓ(z + δ) − ℓ(z)`` is
        ``log1p(Σ_k p_k expm1(δ_k)) − δ_y`` (``p`` = σ(z) or softmax(z)), exact to the size of
        the change; rows with a large δ use the plain difference, which has no cancellation.
        """
        rows = np.arange(self.n)
        if self.k == 1:  # one logit: the two-class softmax of (0, z)
            z, dz = np.hstack([np.zeros_like(z), z]), np.hstack([np.zeros_like(dz), dz])
        p = np.exp(z - logsumexp(z, 1, keepdims=True))
        terms = -dz[rows, self.y]
        small = np.abs(dz).max(1) < 1.0
        terms[small] += np.log1p(np.sum(p[small] * np.expm1(dz[small]), 1))
        far = ~small
        terms[far] += logsumexp(z[far] + dz[far], 1) - logsumexp(z[far], 1)
        reg = self.lam * (float(np.sum(theta * delta)) + 0.5 * float(np.sum(delta * delta)))
        return math.fsum(terms) / self.n + reg

    def hessp(self, curv: np.ndarray, v: np.ndarray) -> np.ndarray:
        """H[V] at the point whose curvature is ``curv``, for ``V`` shaped like Θ."""
        self.hessian_products += 1
        dz = _matmul(self.x_hv, v[:, :-1].T) + v[:, -1]
        if self.k == 1:
            dr = curv * dz
        else:
            pdz = curv * dz
            dr = pdz - curv * pdz.sum(1, keepdims=True)
        out = np.empty_like(v)
        out[:, :-1] = _matmul(self.x_hv.T, dr).T / self.n
        out[:, -1] = dr.sum(0) / self.n
        return out + self.lam * v

    def preconditioner(self, curv: np.ndarray, exact_block: bool) -> _Preconditioner:
        """P ≈ H at the point whose curvature is ``curv`` (module docstring)."""
        if self.sparse or self.d + 1 > _MAX_DENSE:
            return _DiagonalPreconditioner(self, curv)
        return _PrincipalPreconditioner(self, curv, exact_block)

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eigenvalues c (descending) and vectors U of C = X̃ᵀX̃/n, and X̃ U[:, :rank] (float32)."""
        if self._basis is None:
            x32 = self.x_hv
            sample = x32[:: max(1, self.n // _BASIS_ROWS)]
            dim = self.d + 1
            c = np.empty((dim, dim))
            c[:-1, :-1] = sample.T @ sample / len(sample)
            c[:-1, -1] = c[-1, :-1] = sample.mean(0)
            c[-1, -1] = 1.0
            evals, evecs = np.linalg.eigh(c)
            evals, evecs = np.clip(evals[::-1], 0.0, None), evecs[:, ::-1]
            r = min(_RANK, dim)
            lead = evecs[:, :r].astype(np.float32)
            z = x32 @ lead[:-1] + lead[-1]
            self._basis = (evals.copy(), np.ascontiguousarray(evecs), z)
        return self._basis


class _Preconditioner:
    """Θ = M u and its adjoint, with MᵀHM ≈ I."""

    def to_theta(self, u: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _PrincipalPreconditioner(_Preconditioner):
    """Exact Hessian on the leading principal directions, Kronecker form on the rest."""

    def __init__(self, f: LogisticObjective, curv: np.ndarray, exact_block: bool) -> None:
        evals, self.u, z = f.basis()
        k, n = f.k, f.n
        self.r = r = z.shape[1] if exact_block else 0
        block = np.zeros((k, r, k, r))
        mean_a = np.empty((k, k))
        zt = np.ascontiguousarray(z[:, :r].T)
        for (i, j), a in _curvature_pairs(curv, f.k):
            mean_a[i, j] = mean_a[j, i] = a.mean()
            if r:
                a32, scale = _to_float32(a)
                block[i, :, j, :] = (zt @ (a32[:, None] * z[:, :r])) * (scale / n)
                block[j, :, i, :] = block[i, :, j, :].T
        self.chol = np.linalg.cholesky(block.reshape(k * r, k * r) + f.lam * np.eye(k * r))
        avals, self.avecs = np.linalg.eigh(mean_a)
        self.scale = 1.0 / np.sqrt(np.clip(avals, 0.0, None)[:, None] * evals[None, r:] + f.lam)
        self.k = k

    def _rest(self, v: np.ndarray) -> np.ndarray:  # symmetric: (A ⊗ c + λ)^(-1/2)
        return self.avecs @ (self.scale * (self.avecs.T @ v))

    def to_theta(self, u: np.ndarray) -> np.ndarray:
        k, r = self.k, self.r
        top = scipy.linalg.solve_triangular(
            self.chol, u[: k * r], trans="T", lower=True, check_finite=False
        )
        rest = self._rest(u[k * r :].reshape(k, -1))
        return np.hstack([top.reshape(k, r), rest]) @ self.u.T

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        r = self.r
        rotated = g @ self.u
        top = scipy.linalg.solve_triangular(
            self.chol, rotated[:, :r].ravel(), lower=True, check_finite=False
        )
        return np.concatenate([top, self._rest(rotated[:, r:]).ravel()])


class _DiagonalPreconditioner(_Preconditioner):
    """P = diag(H): (1/n) Σ_i (A_i)_kk x_ij² + λ."""

    def __init__(self, f: LogisticObjective, curv: np.ndarray) -> None:
        x = f.x
        diag_a = curv if f.k == 1 else curv * (1.0 - curv)
        if f.sparse:
            weights = np.asarray(x.multiply(x).T @ diag_a).T / f.n
        else:
            weights = (diag_a.T @ (x * x)) / f.n
        diag = np.hstack([weights, diag_a.mean(0)[:, None]]) + f.lam
        self.s = 1.0 / np.sqrt(diag)

    def to_theta(self, u: np.ndarray) -> np.ndarray:
        return u.reshape(self.s.shape) * self.s

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        return (g * self.s).ravel()


def newton_minimize(
    f: LogisticObjective,
    grad_tol: float = 1e-9,
    max_rounds: int = 20,
    max_iter: int = 100,
    progress: Progress | None = None,
) -> NewtonResult:
    """Minimise ``f`` from Θ = 0 until ‖∇F‖ ≤ ``grad_tol`` (module docstring).

    Each round builds a preconditioner at its start point Θ₀ and runs trust-ncg (at most
    ``max_iter`` iterations) on u ↦ F(Θ₀ + M u) − F(Θ₀); ``progress(iteration, F, ‖∇F‖)`` is
    called after each iteration. Returns the last point whether or not it met the tolerance:
    check ``grad_norm``.
    """
    theta = np.zeros(f.shape)
    z = f.logits(theta)
    loss, grad, curv = f.loss_grad(theta, z)
    gnorm = float(np.linalg.norm(grad))
    iterations = rounds = 0
    while gnorm > grad_tol and rounds < max_rounds:
        # The first round ends early, at a 100-fold smaller gradient, to rebuild P there.
        stop = max(grad_tol, _REFRESH * gnorm if rounds == 0 else 0.0)
        pre = f.preconditioner(curv, exact_block=rounds > 0)
        point = _Round(f, theta, z, pre, stop, progress, iterations)
        u = point.run(max_iter)
        rounds += 1
        iterations = point.iterations
        start = gnorm
        theta, loss, grad, curv, z = point.at(u)
        gnorm = float(np.linalg.norm(grad))
        if gnorm >= start:  # no progress at all (rounding floor): more rounds will not help
            break
    return NewtonResult(
        theta=theta,
        loss=loss,
        grad_norm=gnorm,
        iterations=iterations,
        rounds=rounds,
        hessian_products=f.hessian_products,
        gradients=f.gradients,
    )


class _Round:
    """One round of trust-ncg on u ↦ F(Θ₀ + M u) − F(Θ₀), keeping its last two points."""

    def __init__(
        self,
        f: LogisticObjective,
        theta0: np.ndarray,
        z0: np.ndarray,
        pre: _Preconditioner,
        stop: float,
        progress: Progress | None,
        iterations: int,
    ) -> None:
        self.f, self.theta0, self.z0, self.pre = f, theta0, z0, pre
        self.stop, self.progress, self.iterations = stop, progress, iterations
        self._memo: dict[bytes, tuple[float, tuple[Any, ...]]] = {}

    def run(self, max_iter: int) -> np.ndarray:
        res = scipy.optimize.minimize(
            self.fun,
            np.zeros(self.theta0.size),
            jac=True,
            hessp=self.hessp,
            method="trust-ncg",
            callback=self.callback,
            options={"gtol": 0.0, "maxiter": max_iter},  # the callback decides when to stop
        )
        return np.asarray(res.x)

    def _evaluate(self, u: np.ndarray) -> tuple[float, tuple[Any, ...]]:
        """F(Θ) − F(Θ₀), and (Θ, F, ∇F, curvature, logits) at Θ = Θ₀ + M u."""
        key = u.tobytes()
        if key not in self._memo:
            delta = self.pre.to_theta(u)
            dz = self.f.logits(delta)
            theta, z = self.theta0 + delta, self.z0 + dz
            loss, grad, curv = self.f.loss_grad(theta, z)
            change = self.f.loss_change(self.theta0, self.z0, delta, dz)
            last = list(self._memo.items())[-1:]
            self._memo = dict([*last, (key, (change, (theta, loss, grad, curv, z)))])
        return self._memo[key]

    def at(self, u: np.ndarray) -> tuple[Any, ...]:
        return self._evaluate(u)[1]

    def fun(self, u: np.ndarray) -> tuple[float, np.ndarray]:
        change, (_, _, grad, _, _) = self._evaluate(u)
        return change, self.pre.adjoint(grad)

    def hessp(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        curv = self._evaluate(u)[1][3]
        return self.pre.adjoint(self.f.hessp(curv, self.pre.to_theta(v)))

    def callback(self, intermediate_result: scipy.optimize.OptimizeResult) -> None:
        self.iterations += 1
        _, loss, grad, _, _ = self.at(intermediate_result.x)
        norm = float(np.linalg.norm(grad))
        if self.progress is not None:
            self.progress(self.iterations, loss, norm)
        if norm <= self.stop:
            raise StopIteration


def _curvature_pairs(curv: np.ndarray, k: int) -> list[tuple[tuple[int, int], np.ndarray]]:
    """(i, j), (A_n)_ij over the rows, for i ≤ j: p_i δ_ij − p_i p_j, or σ' for one logit."""
    if k == 1:
        return [((0, 0), curv[:, 0])]
    return [
        ((i, j), (curv[:, i] if i == j else 0.0) - curv[:, i] * curv[:, j])
        for i in range(k)
        for j in range(i, k)
    ]


def _to_float32(a: np.ndarray) -> tuple[np.ndarray, float]:
    """``(a / s, s)`` with ``a / s`` in float32 and entries below 1e-20 zeroed.

    Softmax products underflow to subnormal float32 numbers, which make BLAS crawl (100x);
    scaling by the largest entry and dropping what is 1e-20 of it avoids them.
    """
    s = float(np.max(np.abs(a))) if a.size else 0.0
    if s == 0.0 or not math.isfinite(s):
        return a.astype(np.float32), 1.0
    out = (a / s).astype(np.float32)
    out[np.abs(out) < 1e-20] = 0.0
    return out, s


def _matmul(x: Any, v: np.ndarray) -> np.ndarray:
    """``x @ v`` in float64; in float32 (scaled, see :func:`_to_float32`) when ``x`` is."""
    if getattr(x, "dtype", None) == np.float32:
        v32, s = _to_float32(v)
        return (x @ v32).astype(np.float64) * s
    return np.asarray(x @ v)
