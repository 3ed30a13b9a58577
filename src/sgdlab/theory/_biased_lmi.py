"""The small LMI behind :mod:`sgdlab.theory.biased_sgd`, built and solved with cvxpy.

State ``ξ = (x − x*, g, e)`` with ``g = ∇f_i(x)`` and ``e`` the gradient error. One step is
``x⁺ − x* = vᵀξ`` with ``v = (1, −α, −α)``, so ``‖x⁺ − x*‖² = ξᵀ(vvᵀ)ξ``. Three quadratic
constraints hold in expectation, ``E[ξᵀMⱼξ] + sⱼ ≥ 0`` (the scalar matrices stand for
``Mⱼ ⊗ I_n``):

* strong convexity of ``f``:  ``M_sc = [[−2m, 1, 0], [1, 0, 0], [0, 0, 0]]``, ``s_sc = 0``;
* second moment of ``g``:  ``smooth`` ``diag(2L², −1, 0)`` with ``2σ²``; ``smooth-convex``
  ``[[0, L, 0], [L, −1, 0], [0, 0, 0]]`` with ``2σ²``; ``bounded`` ``diag(β², −1, 0)`` with ``K``;
* the error model ``‖e‖² ≤ δ²‖g‖² + c²``:  ``M_e = diag(0, δ², −1)``, ``s_e = c²``.

S-procedure: if multipliers ``λ ≥ 0`` give ``vvᵀ − ρ²E₁₁ + Σ λⱼMⱼ ⪯ 0`` then
``E‖x⁺ − x*‖² ≤ ρ²E‖x − x*‖² + H`` with ``H = Σ λⱼsⱼ``. By a Schur complement the condition is
``[[−ρ²E₁₁ + Σ λⱼMⱼ, v], [vᵀ, −1]] ⪯ 0``, linear in ``(ρ², λ, α)`` jointly, so the step size can
be a variable too (the sequential step). When ``δ = c = 0`` the error is zero and its row and
column are dropped rather than forcing ``λ_e → ∞``.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, replace

import cvxpy as cp
import numpy as np

from sgdlab.errors import ConfigError, SolverError

SOLVERS: dict[str, str] = {"clarabel": cp.CLARABEL, "scs": cp.SCS}
# SCS is a first-order method: its default tolerance (1e-4) is too loose to compare with a
# closed form, so ask for more; Clarabel's interior-point defaults are already ~1e-8.
_SOLVER_OPTIONS: dict[str, dict[str, float | int]] = {
    "clarabel": {},
    "scs": {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 200_000},
}
# The least-ρ² question returns a certificate whose ρ² is within this (relative) of the least.
_LEAST_RHO2_GAP = 1e-6
# A returned certificate is re-checked in numpy: the largest eigenvalue of the LMI matrix,
# relative to its largest entry, may exceed zero by this much (interior-point accuracy).
CERTIFICATE_TOL = 1e-7


@dataclass(frozen=True)
class LMISolution:
    """What one solve returns; ``nan`` values when not ``feasible``."""

    rho2: float
    H: float
    alpha: float
    multipliers: tuple[float, float, float]  # (λ_sc, λ_g, λ_e)
    status: str
    feasible: bool
    residual: float  # relative largest eigenvalue of the LMI matrix at the returned point


def constraint_matrices(
    case: str, m: float, L: float, delta: float, beta: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(M_sc, M_g, M_e)`` as 3×3 arrays, in the order of the state ``(x − x*, g, e)``.

    >>> M_sc, M_g, M_e = constraint_matrices("smooth", 1.0, 2.0, 0.5, None)
    >>> M_g.diagonal().tolist(), M_e.diagonal().tolist()
    ([8.0, -1.0, 0.0], [0.0, 0.25, -1.0])
    """
    M_sc = np.array([[-2.0 * m, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    if case == "smooth":
        M_g = np.diag([2.0 * L * L, -1.0, 0.0])
    elif case == "smooth-convex":
        M_g = np.array([[0.0, L, 0.0], [L, -1.0, 0.0], [0.0, 0.0, 0.0]])
    elif case == "bounded":
        if beta is None:
            raise ConfigError("Invalid beta: None (case 'bounded' needs beta)")
        M_g = np.diag([beta * beta, -1.0, 0.0])
    else:
        raise ConfigError(f"Invalid case: {case!r}")
    M_e = np.diag([0.0, delta * delta, -1.0])
    return M_sc, M_g, M_e


def lmi_matrix(
    mats: tuple[np.ndarray, np.ndarray, np.ndarray],
    alpha: float,
    rho2: float,
    multipliers: tuple[float, float, float],
) -> np.ndarray:
    """``vvᵀ − ρ²E₁₁ + Σ λⱼMⱼ`` in numbers: a certificate is valid iff this is ⪯ 0."""
    v = np.array([1.0, -alpha, -alpha])
    out = np.outer(v, v)
    out[0, 0] -= rho2
    for lam, M in zip(multipliers, mats, strict=True):
        out = out + lam * M
    return out


def certificate_residual(
    mats: tuple[np.ndarray, np.ndarray, np.ndarray],
    alpha: float,
    rho2: float,
    multipliers: tuple[float, float, float],
    *,
    with_error: bool = True,
) -> float:
    """Largest eigenvalue of :func:`lmi_matrix` over its largest entry: ``≤ 0`` certifies.

    Without the error (``with_error=False``, ``δ = c = 0``) only the ``(x − x*, g)`` block counts.
    """
    M = lmi_matrix(mats, alpha, rho2, multipliers)
    if not with_error:
        M = M[:2, :2]
    return float(np.linalg.eigvalsh(M)[-1] / max(1.0, float(np.abs(M).max())))


def solve_lmi(
    mats: tuple[np.ndarray, np.ndarray, np.ndarray],
    s_g: float,
    s_e: float,
    *,
    with_error: bool,
    alpha: float | None,
    U: float | None,
    rho2_max: float | None,
    solver: str,
) -> LMISolution:
    """Solve the LMI for one of three questions.

    * ``U`` given: minimise ``ρ²U + H`` (the bound on ``E‖x⁺ − x*‖²`` when ``E‖x − x*‖² = U``);
    * ``rho2_max`` given: minimise ``H`` subject to ``ρ² ≤ rho2_max``;
    * neither: the least ``ρ²`` (to ``1e-6``), then the least ``H`` there (two solves; ``H`` is
      accurate to ~1e-4 relative, as the Pareto front of ``(ρ², H)`` is flat at its end).

    ``alpha=None`` makes the step size a variable (only with ``U``). A solver that fails is
    reported as infeasible (``feasible=False``, its status kept), never raised: near the
    feasibility boundary the conic solvers stop with numerical trouble, and the honest reading
    is "no certificate found". Every returned certificate is re-checked in numpy (its
    ``residual``); one the solver calls optimal that fails the check (a first-order solver
    stopping early) is reported as ``"uncertified"`` and not feasible. A solver that is not
    installed raises :class:`SolverError`.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"Invalid solver: {solver!r} (choose from {sorted(SOLVERS)})")
    if SOLVERS[solver] not in _installed_solvers():
        raise SolverError(f"solver {solver!r} is not installed")
    t = _template(3 if with_error else 2, alpha is None)
    n = t.n
    t.M_sc.value, t.M_g.value = mats[0][:n, :n], mats[1][:n, :n]
    t.M_e.value = mats[2][:n, :n]
    t.s_g.value, t.s_e.value = s_g, s_e if with_error else 0.0
    if alpha is not None:
        assert isinstance(t.alpha, cp.Parameter)  # a Parameter whenever alpha is fixed
        t.alpha.value = alpha

    def attempt(problem: cp.Problem) -> LMISolution:
        status = _solve(problem, solver)
        if not _ok(status):
            return _infeasible(status, alpha)
        lam_v = np.maximum(np.asarray(t.lam.value, dtype=float), 0.0)
        multipliers = (float(lam_v[0]), float(lam_v[1]), float(lam_v[2]))
        alpha_v, rho2_v = _value(t.alpha), _value(t.rho2)
        residual = certificate_residual(mats, alpha_v, rho2_v, multipliers, with_error=with_error)
        if residual > CERTIFICATE_TOL:
            return _infeasible(f"uncertified ({status}, residual {residual:.1e})", alpha, residual)
        H_v = float(s_g * lam_v[1] + s_e * lam_v[2])
        return LMISolution(rho2_v, H_v, alpha_v, multipliers, status, True, residual)

    if U is not None:
        t.U.value = U
        return attempt(t.tangent)
    if alpha is None:
        raise ConfigError("Invalid alpha: None (a variable step size needs U)")
    if rho2_max is not None:
        t.cap.value = rho2_max
        return attempt(t.capped)
    first = attempt(t.least)
    if not first.feasible:
        return first
    # At the least ρ² the LMI has no interior, and capping ρ² a hair above it makes the solver
    # break down (Clarabel even panics). Instead take the tangent at a large U: its ρ² exceeds
    # the least by at most H/U ≤ _LEAST_RHO2_GAP·H*/H₁, and its H tends to the least H.
    t.U.value = max(first.H, 1e-12) / _LEAST_RHO2_GAP
    second = attempt(t.tangent)
    if second.feasible and second.rho2 <= first.rho2 + 2 * _LEAST_RHO2_GAP * max(1.0, first.rho2):
        return second
    # Stage 1's own multipliers still certify a bound; say that H was not minimised.
    return replace(first, status=f"{first.status}; H not minimised ({second.status})")


class _Template:
    """The LMI with every number a cvxpy Parameter, so that cvxpy compiles it once.

    Re-solving a compiled (DPP) problem skips canonicalisation, most of the time of a solve
    this small. The cached problems hold state between calls: not for use across threads.
    """

    def __init__(self, n: int, alpha_is_variable: bool) -> None:
        self.n = n
        self.rho2 = cp.Variable(name="rho2")
        self.lam = cp.Variable(3, nonneg=True, name="lambda")
        self.alpha: cp.Variable | cp.Parameter = (
            cp.Variable(nonneg=True, name="alpha")
            if alpha_is_variable
            else cp.Parameter(nonneg=True, name="alpha")
        )
        self.M_sc, self.M_g, self.M_e = (cp.Parameter((n, n), symmetric=True) for _ in range(3))
        self.s_g, self.s_e = cp.Parameter(nonneg=True), cp.Parameter(nonneg=True)
        self.U, self.cap = cp.Parameter(nonneg=True), cp.Parameter()
        N = -self.rho2 * _unit(n, 0, 0) + self.lam[0] * self.M_sc + self.lam[1] * self.M_g
        if n == 3:
            N = N + self.lam[2] * self.M_e
        one = cp.Constant(np.ones((1, 1)))
        v = cp.reshape(cp.hstack([cp.Constant(1.0)] + [-self.alpha] * (n - 1)), (n, 1), order="F")
        big = cp.bmat([[N, v], [v.T, -one]])
        # cvxpy wants a visibly symmetric expression for an LMI; big is symmetric by construction.
        lmi = [(big + big.T) / 2 << 0]
        if n == 2:
            lmi.append(self.lam[2] == 0)
        H = self.s_g * self.lam[1] + self.s_e * self.lam[2]
        self.tangent = cp.Problem(cp.Minimize(self.rho2 * self.U + H), lmi)
        self.capped = cp.Problem(cp.Minimize(H), [*lmi, self.rho2 <= self.cap])
        self.least = cp.Problem(cp.Minimize(self.rho2), lmi)


@functools.cache
def _installed_solvers() -> frozenset[str]:
    # cvxpy probes every solver's import on each call: a few ms, as long as the solve itself.
    return frozenset(cp.installed_solvers())


@functools.cache
def _template(n: int, alpha_is_variable: bool) -> _Template:
    return _Template(n, alpha_is_variable)


def _unit(n: int, i: int, j: int) -> np.ndarray:
    out = np.zeros((n, n))
    out[i, j] = 1.0
    return out


def _value(expr: cp.Expression) -> float:
    return float(np.asarray(expr.value, dtype=float))


def _ok(status: str) -> bool:
    return status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)


def _solve(problem: cp.Problem, solver: str) -> str:
    try:
        with warnings.catch_warnings():
            # cvxpy warns on inaccurate solutions; the status is returned and every
            # certificate is re-checked, so the warning would only repeat that.
            warnings.simplefilter("ignore", UserWarning)
            # warm_start=False: a warm start reuses (and after a panic, reuses a broken) solver.
            problem.solve(solver=SOLVERS[solver], warm_start=False, **_SOLVER_OPTIONS[solver])
    except cp.error.SolverError as exc:
        return f"solver_failed ({_first_line(exc)})"
    except BaseException as exc:
        # Clarabel is Rust: a numerical breakdown (an eigendecomposition of a NaN iterate, near
        # the feasibility boundary) surfaces as pyo3's PanicException, a BaseException. It is a
        # solver failure like any other; everything else (KeyboardInterrupt) propagates.
        if type(exc).__name__ != "PanicException":
            raise
        return f"solver_failed (panic: {_first_line(exc)})"
    return str(problem.status)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _infeasible(status: str, alpha: float | None, residual: float = math.nan) -> LMISolution:
    nan = math.nan
    return LMISolution(
        rho2=nan,
        H=nan,
        alpha=nan if alpha is None else alpha,
        multipliers=(nan, nan, nan),
        status="infeasible" if status.startswith("infeasible") else status,
        feasible=False,
        residual=residual,
    )
