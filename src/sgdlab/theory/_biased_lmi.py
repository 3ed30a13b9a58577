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
# Relative slack on ρ² in the second stage of "least ρ², then least H": the first stage's ρ² is
# only solver-accurate, and H along the Pareto front moves like the square root of the slack.
_STAGE2_SLACKS = (1e-9, 1e-8, 1e-7, 1e-6)
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
    * neither: the least ``ρ²``, then the least ``H`` at that ``ρ²`` (two solves).

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
    if SOLVERS[solver] not in cp.installed_solvers():
        raise SolverError(f"solver {solver!r} is not installed")
    n = 3 if with_error else 2
    rho2 = cp.Variable(name="rho2")
    lam = cp.Variable(3, nonneg=True, name="lambda")
    a = cp.Variable(nonneg=True, name="alpha") if alpha is None else cp.Constant(alpha)
    N = -rho2 * _unit(n, 0, 0) + lam[0] * mats[0][:n, :n] + lam[1] * mats[1][:n, :n]
    if with_error:
        N = N + lam[2] * mats[2]
    v = cp.reshape(cp.hstack([cp.Constant(1.0)] + [-a] * (n - 1)), (n, 1), order="F")
    big = cp.bmat([[N, v], [v.T, cp.Constant(-np.ones((1, 1)))]])
    # cvxpy wants a visibly symmetric expression for an LMI; big is symmetric by construction.
    constraints = [(big + big.T) / 2 << 0]
    if not with_error:
        constraints.append(lam[2] == 0)
    H = s_g * lam[1] + s_e * lam[2]

    def attempt(objective: cp.Expression, extra: list[cp.Constraint]) -> LMISolution:
        status = _solve(cp.Problem(cp.Minimize(objective), [*constraints, *extra]), solver)
        if not _ok(status):
            return _infeasible(status, alpha)
        lam_v = np.maximum(np.asarray(lam.value, dtype=float), 0.0)
        multipliers = (float(lam_v[0]), float(lam_v[1]), float(lam_v[2]))
        alpha_v, rho2_v = _value(a), _value(rho2)
        residual = certificate_residual(mats, alpha_v, rho2_v, multipliers, with_error=with_error)
        if residual > CERTIFICATE_TOL:
            return _infeasible(f"uncertified ({status}, residual {residual:.1e})", alpha, residual)
        H_v = float(s_g * lam_v[1] + s_e * lam_v[2])
        return LMISolution(rho2_v, H_v, alpha_v, multipliers, status, True, residual)

    if U is not None:
        return attempt(rho2 * U + H, [])
    if rho2_max is not None:
        return attempt(H, [rho2 <= rho2_max])
    first = attempt(rho2, [])
    if not first.feasible:
        return first
    # At the least ρ² the LMI has no interior, so H is minimised with ρ² a hair above it; the
    # smallest slack the solver handles wins (H moves like its square root along the front).
    for slack in _STAGE2_SLACKS:
        cap = first.rho2 + slack * max(1.0, abs(first.rho2))
        second = attempt(H, [rho2 <= cap])
        if second.feasible:
            return replace(second, status=f"{second.status} (rho2 slack {slack:.0e})")
    # Stage 1's own multipliers still certify a bound; say that H was not minimised.
    return replace(first, status=f"{first.status}; H not minimised")


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
            problem.solve(solver=SOLVERS[solver], **_SOLVER_OPTIONS[solver])
    except cp.error.SolverError as exc:
        return f"solver_failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return str(problem.status)


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
