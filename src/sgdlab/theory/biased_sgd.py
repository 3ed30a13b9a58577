r"""Biased SGD by stochastic quadratic constraints and a small LMI (Hu, Seiler, Lessard 2021).

Method
------
``x_{k+1} = x_k − α(∇f_{i_k}(x_k) + e_k)`` with ``‖e_k‖² ≤ δ²‖∇f_{i_k}(x_k)‖² + c²``, ``f = E f_i``
``m``-strongly convex, ``σ² = E‖∇f_i(x*)‖²``. Write ``U = E‖x − x*‖²``, ``g = ∇f_i(x)``. The second
moment of ``g`` is bounded in three cases (the constants follow from ``σ²``):

* ``smooth``: each ``f_i`` L-smooth: ``‖g‖² ≤ 2‖g − ∇f_i(x*)‖² + 2‖∇f_i(x*)‖²`` gives
  ``E‖g‖² ≤ 2L²U + 2σ²``, i.e. the ``bounded`` case with ``β² = 2L²``, ``K = 2σ²``;
* ``smooth-convex``: each ``f_i`` L-smooth and convex: co-coercivity gives
  ``E‖g‖² ≤ 2L⟨x − x*, ∇f(x)⟩ + 2σ²``;
* ``bounded``: ``E‖g‖² ≤ β²U + K`` (``K ≥ σ²``, ``β ≥ m``; ``K`` defaults to ``σ²``).

The LMI (:mod:`sgdlab.theory._biased_lmi`) certifies ``E‖x⁺ − x*‖² ≤ ρ²U + H``.

Closed forms (derived here, tested against the SDP)
---------------------------------------------------
Dual view: for a given ``U`` the least ``ρ²U + H`` over the LMI equals the largest
``E‖x − αg − αe‖²`` over second-moment matrices of ``(x − x*, g, e)`` meeting the constraints.
With ``p = E⟨x − x*, g⟩ ≥ mU``, ``G = E‖g‖²`` and ``E‖e‖² ≤ δ²G + c²``, the error is worst when
aligned with ``x − x* − αg``, giving ``(√(U − 2αp + α²G) + α√(δ²G + c²))²``. In the
``smooth``/``bounded`` case this grows as ``p`` falls and ``G`` rises, so with ``β², K`` as above

    ``V_α(U) = (√(aU + b) + √(a'U + b'))²``,  ``a = 1 − 2mα + α²β²``, ``b = α²K``,
    ``a' = α²δ²β²``, ``b' = α²(δ²K + c²)``.

``V`` is concave in ``U``; its tangents are the LMI's ``(ρ², H)`` pairs, and Young's inequality
``(s + t)² ≤ (1 + η)s² + (1 + 1/η)t²`` names them: ``ρ² = (1 + η)a + (1 + 1/η)a'``,
``H = (1 + η)b + (1 + 1/η)b'``, with multipliers ``λ_sc = (1 + η)α``,
``λ_g = (1 + η)α² + (1 + 1/η)α²δ²``, ``λ_e = (1 + 1/η)α²``. The tangent at ``U`` has
``η = √(a'U + b') / √(aU + b)``; the least rate is ``ρ² = (√a + √a')²`` at ``η = √(a'/a)``. Unbiased
``smooth`` (``δ = c = 0``): ``ρ² = 1 − 2mα + 2L²α²``, ``H = 2α²σ²``. With ``δ = 0 < c`` the least
``ρ²`` is an infimum that no finite ``H`` attains (``η → 0``): ask for the tangent at a ``U``.
In the ``smooth-convex`` case with ``δ = 0`` and ``α ≤ 1/L`` the same form holds with
``a = 1 − 2mα + 2mLα²``, ``b = 2α²σ²``, ``a' = 0``, ``b' = α²c²`` and ``λ_sc = (1 + η)(α − Lα²)``.

Sequential step sizes: ``U_{k+1} = min_α V_α(U_k)``. With ``S = β²U + K`` (the ``E‖g‖²`` bound;
``2mLU + 2σ²`` for ``smooth-convex`` with ``δ = 0``) and ``R² = δ²S + c²``,
``√V_α = √(U − 2mUα + Sα²) + αR``. Put ``cos θ₁ = m√(U/S)``, ``sin θ₂ = R/√S``; minimising over
``α ≥ 0`` gives

    ``U_{k+1} = U_k sin²(θ₁ + θ₂)``,  ``α_k = √(U_k/S) cos(θ₁ + θ₂)/cos θ₂``,

and ``α_k = 0``, ``U_{k+1} = U_k`` once ``θ₁ + θ₂ ≥ π/2``. Unbiased: ``α_k = mU_k/S``.
(For ``smooth-convex``, ``α_k ≤ 1/(2L)`` so the ``α ≤ 1/L`` form is exact there.)

Accuracy floor and robustness: the recursion stalls where ``θ₁ + θ₂ = π/2``, i.e. ``m²U = R²``:

    ``U_∞ = (c² + δ²K)/(m² − δ²β²)``, and ``smooth``: ``(c² + 2δ²σ²)/(m² − 2δ²L²)``,

finite iff ``δ < m/β`` (``smooth``: ``δ < m/(√2 L)``), which is also exactly when some ``α``
gives ``ρ² < 1``. The floor ``c²/(m² − 2δ²L²)`` holds for ``σ² = 0``; noise adds ``2δ²σ²``
because a relative error of a noisy gradient is a bias of size up to ``δσ``. For
``smooth-convex`` the stall condition ``min_p (p − √(U(δ²(2Lp + 2σ²) + c²))) ≥ 0`` over
``p ≥ mU`` gives ``U_∞ = (c² + 2δ²σ²)/(m² − 2δ²mL)``, finite iff ``δ < √(m/(2L))``.

>>> s = BiasedSGDSetting("smooth", m=1.0, L=2.0, sigma2=1.0)
>>> b = one_step_closed_form(s, alpha=0.1)
>>> round(b.rho2, 12), round(b.H, 12)
(0.88, 0.02)
>>> round(accuracy_floor(BiasedSGDSetting("smooth", m=1.0, L=2.0, delta=0.1, c=0.1)), 6)
0.01087
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sgdlab.errors import ConfigError, SolverError
from sgdlab.theory._biased_lmi import (
    SOLVERS,
    LMISolution,
    certificate_residual,
    constraint_matrices,
    solve_lmi,
)

CASES = ("smooth", "smooth-convex", "bounded")


@dataclass(frozen=True)
class BiasedSGDSetting:
    """The function class and the error model; validated on construction."""

    case: str
    m: float
    L: float
    delta: float = 0.0
    c: float = 0.0
    sigma2: float = 0.0
    beta: float | None = None
    K: float | None = None

    def __post_init__(self) -> None:
        if self.case not in CASES:
            raise ConfigError(f"Invalid case: {self.case!r} (choose from {', '.join(CASES)})")
        for name in ("m", "L"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"Invalid {name}: {getattr(self, name)}")
        for name in ("delta", "c", "sigma2"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"Invalid {name}: {getattr(self, name)}")
        if self.m > self.L:
            raise ConfigError(f"Invalid m: {self.m} > L={self.L} (m must not exceed L)")
        if self.case != "bounded":
            if self.beta is not None or self.K is not None:
                raise ConfigError(f"Invalid beta/K: only for case 'bounded', not {self.case!r}")
            return
        if self.beta is None or not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"Invalid beta: {self.beta} (case 'bounded' needs beta > 0)")
        if self.beta < self.m:
            # E‖g‖² ≥ ‖∇f(x)‖² ≥ m²‖x − x*‖², so β < m describes no function at all.
            raise ConfigError(f"Invalid beta: {self.beta} < m={self.m} (E||g||^2 >= m^2 U)")
        if self.K is None:
            object.__setattr__(self, "K", self.sigma2)
        elif not (math.isfinite(self.K) and self.K >= self.sigma2):
            raise ConfigError(f"Invalid K: {self.K} < sigma2={self.sigma2} (E||g(x*)||^2 <= K)")

    @property
    def biased(self) -> bool:
        return self.delta > 0 or self.c > 0

    @property
    def moment(self) -> tuple[float, float]:
        """``(β², K)`` of ``E‖g‖² ≤ β²U + K``; for ``smooth-convex`` the bound at ``p = mU``."""
        if self.case == "smooth":
            return 2.0 * self.L**2, 2.0 * self.sigma2
        if self.case == "bounded":
            # Both set by __post_init__ for this case.
            return float(self.beta or 0.0) ** 2, float(self.K or 0.0)
        return 2.0 * self.m * self.L, 2.0 * self.sigma2

    @property
    def moment_constant(self) -> float:
        """``s_g``, the constant of the second-moment constraint (``2σ²`` or ``K``)."""
        return self.moment[1]


@dataclass(frozen=True)
class OneStepBound:
    """``E‖x⁺ − x*‖² ≤ rho2·E‖x − x*‖² + H`` for step ``alpha``; ``nan`` if not ``feasible``.

    ``U`` is the state the bound is the tangent at (``None``: the least ``rho2``);
    ``solver`` is ``"clarabel"``, ``"scs"`` or ``"closed-form"``.
    """

    rho2: float
    H: float
    alpha: float
    case: str
    solver: str
    status: str
    U: float | None = None
    multipliers: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    feasible: bool = True
    residual: float = math.nan  # ≤ 0 (to rounding): the multipliers certify the bound

    def value(self, U: float) -> float:
        """The bound ``rho2·U + H`` on the next ``E‖x − x*‖²``."""
        return self.rho2 * U + self.H


@dataclass(frozen=True, eq=False)
class Schedule:
    """``bounds[k]`` bounds ``E‖x_k − x*‖²`` (``bounds[0] = U0``) under step ``alphas[k]``."""

    alphas: np.ndarray = field(repr=False)
    bounds: np.ndarray = field(repr=False)
    case: str
    method: str
    floor: float


def one_step_bound(
    setting: BiasedSGDSetting,
    alpha: float,
    *,
    U: float | None = None,
    rho2_max: float | None = None,
    solver: str = "clarabel",
) -> OneStepBound:
    """Solve the LMI for step ``alpha`` (see :func:`_biased_lmi.solve_lmi` for the modes).

    Default: the least ``ρ²`` and the least ``H`` at it; with ``U``: the tangent there
    (least ``ρ²U + H``); with ``rho2_max``: the least ``H`` with ``ρ² ≤ rho2_max``, which may be
    infeasible (then ``feasible=False``). Solver failures are reported as infeasible, and each
    answer's multipliers are re-checked in numpy (``residual``). Accuracy: the tangent value
    ``ρ²U + H`` to ~1e-8; in the default mode ``ρ²`` to 1e-6 and ``H`` to ~1e-4 (relative).
    """
    _check_alpha(alpha)
    _check_mode(setting, U, rho2_max)
    sol = _solve(setting, alpha, U, rho2_max, solver)
    return OneStepBound(
        rho2=sol.rho2,
        H=sol.H,
        alpha=alpha,
        case=setting.case,
        solver=solver,
        status=sol.status,
        U=U,
        multipliers=sol.multipliers,
        feasible=sol.feasible,
        residual=sol.residual,
    )


def one_step_closed_form(
    setting: BiasedSGDSetting, alpha: float, *, U: float | None = None
) -> OneStepBound | None:
    """The LMI's answer in closed form (module docstring), or ``None`` where there is none.

    There is one for ``smooth`` and ``bounded`` (any ``δ, c``), and for ``smooth-convex`` with
    ``δ = 0`` and ``α ≤ 1/L``.
    """
    _check_alpha(alpha)
    _check_mode(setting, U, None)
    coeffs = _coefficients(setting, alpha)
    if coeffs is None:
        return None
    a, b, a2, b2 = coeffs
    if U is None:
        if a == 0.0 and b > 0.0:
            return None  # β = m, α = 1/m: V grows like √U, the least ρ² has no finite H
        eta = math.sqrt(a2 / a) if a > 0 else math.inf
    else:
        s, t = math.sqrt(a * U + b), math.sqrt(a2 * U + b2)
        eta = t / s if s > 0 else math.inf
    # η = 0 means the error term vanishes (a' = b' = 0); η = ∞ that the gradient term does.
    if eta == 0.0:
        rho2, H, w1, w2 = a, b, 1.0, 0.0
    elif math.isinf(eta):
        rho2, H, w1, w2 = a2, b2, 0.0, 1.0
    else:
        w1, w2 = 1.0 + eta, 1.0 + 1.0 / eta
        rho2, H = w1 * a + w2 * a2, w1 * b + w2 * b2
    if setting.case == "smooth-convex":
        lam_sc, lam_g = w1 * (alpha - setting.L * alpha**2), w1 * alpha**2
    else:
        lam_sc, lam_g = w1 * alpha, (w1 + w2 * setting.delta**2) * alpha**2
    multipliers = (lam_sc, lam_g, w2 * alpha**2)
    mats = constraint_matrices(setting.case, setting.m, setting.L, setting.delta, setting.beta)
    return OneStepBound(
        rho2=rho2,
        H=H,
        alpha=alpha,
        case=setting.case,
        solver="closed-form",
        status="optimal",
        U=U,
        multipliers=multipliers,
        residual=certificate_residual(mats, alpha, rho2, multipliers, with_error=setting.biased),
    )


def worst_case_value(setting: BiasedSGDSetting, alpha: float, U: float) -> float | None:
    """``V_α(U) = (√(aU + b) + √(a'U + b'))²``: the LMI's least ``ρ²U + H``, or ``None``."""
    _check_alpha(alpha)
    _check_U(U)
    coeffs = _coefficients(setting, alpha)
    if coeffs is None:
        return None
    a, b, a2, b2 = coeffs
    return (math.sqrt(a * U + b) + math.sqrt(a2 * U + b2)) ** 2


def sequential_step(
    setting: BiasedSGDSetting, U: float, *, solver: str = "clarabel"
) -> tuple[float, float]:
    """One step of the sequential SDP: ``(α, U⁺)`` minimising ``ρ²U + H`` over ``α`` and ``λ``."""
    _check_U(U)
    sol = _solve(setting, None, U, None, solver)
    if not sol.feasible:
        # α = 0, ρ² = 1 is always a certificate, so a failure here is the solver's, not ours.
        raise SolverError(f"{solver} failed on the sequential biased-SGD LMI: {sol.status}")
    return sol.alpha, sol.rho2 * U + sol.H


def sequential_schedule(
    setting: BiasedSGDSetting,
    U0: float,
    steps: int,
    *,
    method: str = "auto",
    solver: str = "clarabel",
) -> Schedule:
    """``U_{k+1} = min_α (ρ²U_k + H)`` from ``U0``: the bound curve and the steps it selects.

    ``method``: ``"closed-form"`` (the ``sin²(θ₁ + θ₂)`` recursion), ``"sdp"`` (one LMI per
    step), or ``"auto"`` (closed form where it exists: all but biased ``smooth-convex``).

    >>> sch = sequential_schedule(BiasedSGDSetting("smooth", 1.0, 1.0, sigma2=1.0), 1.0, 2)
    >>> sch.alphas.round(6).tolist(), sch.bounds.round(6).tolist()
    ([0.25, 0.214286], [1.0, 0.75, 0.589286])
    """
    _check_U(U0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"Invalid steps: {steps}")
    has_closed = not (setting.case == "smooth-convex" and setting.delta > 0)
    if method not in ("auto", "closed-form", "sdp"):
        raise ConfigError(f"Invalid method: {method!r} (choose from auto, closed-form, sdp)")
    if solver not in SOLVERS:  # checked even when the closed form leaves it unused
        raise ConfigError(f"Invalid solver: {solver!r} (choose from {sorted(SOLVERS)})")
    if method == "closed-form" and not has_closed:
        raise ConfigError(
            f"Invalid method: 'closed-form' with case {setting.case!r} and delta={setting.delta} "
            "(no closed form; use 'sdp')"
        )
    use_closed = method == "closed-form" or (method == "auto" and has_closed)
    alphas = np.empty(steps)
    bounds = np.empty(steps + 1)
    bounds[0] = U = float(U0)
    for k in range(steps):
        if use_closed:
            alpha, U = _closed_step(setting, U)
        else:
            alpha, U = sequential_step(setting, U, solver=solver)
        alphas[k], bounds[k + 1] = alpha, U
    alphas.flags.writeable = False
    bounds.flags.writeable = False
    return Schedule(
        alphas=alphas,
        bounds=bounds,
        case=setting.case,
        method="closed-form" if use_closed else solver,
        floor=accuracy_floor(setting),
    )


def accuracy_floor(setting: BiasedSGDSetting) -> float:
    """``lim U_k`` of the sequential bound (module docstring); ``inf`` without contraction."""
    s = setting
    if s.case == "smooth-convex":
        denom, num = s.m**2 - 2.0 * s.delta**2 * s.m * s.L, s.c**2 + 2.0 * s.delta**2 * s.sigma2
    else:
        beta2, K = s.moment
        denom, num = s.m**2 - s.delta**2 * beta2, s.c**2 + s.delta**2 * K
    if denom <= 0:
        return math.inf
    return num / denom


def contraction_threshold(setting: BiasedSGDSetting) -> float:
    """The ``δ`` below which some ``α`` gives ``ρ² < 1``: ``m/β`` (``smooth``: ``m/(√2 L)``).

    For ``smooth-convex`` it is ``√(m/(2L))``. The other knobs of ``setting`` do not matter.
    """
    if setting.case == "smooth-convex":
        return math.sqrt(setting.m / (2.0 * setting.L))
    return setting.m / math.sqrt(setting.moment[0])


def _solve(
    setting: BiasedSGDSetting,
    alpha: float | None,
    U: float | None,
    rho2_max: float | None,
    solver: str,
) -> LMISolution:
    """The LMI of ``setting`` for a fixed ``alpha`` (or ``alpha`` a variable when None)."""
    mats = constraint_matrices(setting.case, setting.m, setting.L, setting.delta, setting.beta)
    return solve_lmi(
        mats,
        setting.moment_constant,
        setting.c**2,
        with_error=setting.biased,
        alpha=alpha,
        U=U,
        rho2_max=rho2_max,
        solver=solver,
    )


def _coefficients(
    setting: BiasedSGDSetting, alpha: float
) -> tuple[float, float, float, float] | None:
    """``(a, b, a', b')`` of ``V_α(U) = (√(aU + b) + √(a'U + b'))²`` where a closed form exists."""
    s = setting
    if s.case == "smooth-convex":
        if s.delta > 0 or alpha * s.L > 1.0:
            return None
        a = 1.0 - 2.0 * s.m * alpha + 2.0 * s.m * s.L * alpha**2
        return a, 2.0 * alpha**2 * s.sigma2, 0.0, alpha**2 * s.c**2
    beta2, K = s.moment
    # a ≥ 1 − m²/β² ≥ 0 since β ≥ m; clip the rounding of the β = m, α = 1/m corner.
    a = max(1.0 - 2.0 * s.m * alpha + alpha**2 * beta2, 0.0)
    return a, alpha**2 * K, alpha**2 * s.delta**2 * beta2, alpha**2 * (s.delta**2 * K + s.c**2)


def _closed_step(setting: BiasedSGDSetting, U: float) -> tuple[float, float]:
    """``(α_k, U_{k+1})`` by the ``sin²(θ₁ + θ₂)`` rule of the module docstring."""
    beta2, K = setting.moment
    S = beta2 * U + K
    R2 = setting.delta**2 * S + setting.c**2
    if S <= 0.0 or U <= 0.0:
        return 0.0, U
    cos1 = min(setting.m * math.sqrt(U / S), 1.0)
    sin2 = math.sqrt(R2 / S)
    if sin2 >= 1.0:
        return 0.0, U
    sin1, cos2 = math.sqrt(1.0 - cos1 * cos1), math.sqrt(1.0 - sin2 * sin2)
    cos12 = cos1 * cos2 - sin1 * sin2
    if cos12 <= 0.0:
        return 0.0, U
    sin12 = sin1 * cos2 + cos1 * sin2
    return math.sqrt(U / S) * cos12 / cos2, U * sin12 * sin12


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"Invalid alpha: {alpha}")


def _check_U(U: float) -> None:
    if not (isinstance(U, int | float) and math.isfinite(U) and U >= 0):
        raise ConfigError(f"Invalid U: {U}")


def _check_mode(setting: BiasedSGDSetting, U: float | None, rho2_max: float | None) -> None:
    if U is not None and rho2_max is not None:
        raise ConfigError(f"Invalid U/rho2_max: give at most one (got U={U}, rho2_max={rho2_max})")
    if U is not None and not (isinstance(U, int | float) and math.isfinite(U) and U > 0):
        raise ConfigError(f"Invalid U: {U} (the tangent needs U > 0)")
    if rho2_max is not None and not (math.isfinite(rho2_max) and rho2_max > 0):
        raise ConfigError(f"Invalid rho2_max: {rho2_max}")
    if U is None and rho2_max is None and setting.delta == 0 and setting.c > 0:
        raise ConfigError(
            f"Invalid delta/c: with delta=0 and c={setting.c} the least rho2 has no finite H; "
            "give U (the tangent there) or rho2_max"
        )


__all__ = [
    "CASES",
    "SOLVERS",
    "BiasedSGDSetting",
    "OneStepBound",
    "Schedule",
    "accuracy_floor",
    "contraction_threshold",
    "one_step_bound",
    "one_step_closed_form",
    "sequential_schedule",
    "sequential_step",
    "worst_case_value",
]
