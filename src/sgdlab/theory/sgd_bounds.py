r"""SGD convergence without the bounded-gradient assumption (Nguyen et al., ICML 2018).

Reference: L. M. Nguyen, P. H. Nguyen, M. van Dijk, P. Richtárik, K. Scheinberg, M. Takáč,
"SGD and Hogwild! Convergence Without the Bounded Gradients Assumption", ICML 2018.

Setting. ``F(w) = E_ξ f(w; ξ)`` is μ-strongly convex with minimiser ``w*``; every ``f(·; ξ)`` is
convex and L-smooth (so ``μ <= L``). SGD runs ``w_{t+1} = w_t - η_t ∇f(w_t; ξ_t)`` with ``ξ_t``
drawn independently of the past. Write ``y_t = E‖w_t - w*‖²`` and
``N = 2 E‖∇f(w*; ξ)‖²`` (the gradient noise at the optimum; it is finite and no bound on the
gradients anywhere else is assumed).

**Lemma (second moment).** For every ``w``::

    E‖∇f(w; ξ)‖² <= 4L (F(w) - F(w*)) + N.

*Proof.* ``‖a‖² <= 2‖a - b‖² + 2‖b‖²`` with ``a = ∇f(w; ξ)``, ``b = ∇f(w*; ξ)``. A convex,
L-smooth ``f`` is co-coercive: ``‖∇f(w) - ∇f(w*)‖² <= 2L (f(w) - f(w*) - <∇f(w*), w - w*>)``.
Taking ``E_ξ`` and using ``E ∇f(w*; ξ) = ∇F(w*) = 0`` gives
``E‖a - b‖² <= 2L (F(w) - F(w*))``, hence the claim. ∎

**One step.** Expanding the square and conditioning on ``w_t``::

    E_t‖w_{t+1} - w*‖² = ‖w_t - w*‖² - 2η_t <∇F(w_t), w_t - w*> + η_t² E_t‖∇f(w_t; ξ_t)‖².

Strong convexity gives ``<∇F(w), w - w*> >= F(w) - F(w*) + (μ/2)‖w - w*‖²``; with the lemma::

    E_t‖w_{t+1} - w*‖² <= (1 - μη_t)‖w_t - w*‖² - 2η_t (1 - 2Lη_t)(F(w_t) - F(w*)) + η_t² N.

When ``η_t <= 1/(2L)`` the middle term is ``<= 0``; taking full expectations,

    y_{t+1} <= (1 - μη_t) y_t + η_t² N,                                              (R)

and ``0 <= 1 - μη_t`` since ``μη_t <= μ/(2L) <= 1/2``. Because the right side of (R) is
increasing in ``y_t``, the sequence ``r_0 = y_0``, ``r_{t+1} = (1 - μη_t) r_t + η_t² N``
satisfies ``y_t <= r_t`` for all ``t`` (induction): this is :func:`recursion_bound`, the
tightest curve the argument yields, for any step sequence with ``η_t <= 1/(2L)``.

**Diminishing step** ``η_t = α / (μ (t + E))`` with ``α > 1``. The step condition
``η_t <= η_0 = α/(μE) <= 1/(2L)`` is ``E >= 2αL/μ``. Then, for all ``t >= 0``::

    y_t <= C / (t + E),    C = max{ E · ‖w_0 - w*‖²,  α² N / (μ² (α - 1)) }.

*Proof.* Induction on ``t`` with ``τ = t + E``. At ``t = 0``: ``y_0 <= C/E`` because
``C >= E · y_0``. Step: by (R), with ``μη_t = α/τ`` and ``η_t² N = α² N / (μ² τ²)``,
``y_{t+1} <= (1 - α/τ) C/τ + α²N/(μ²τ²) = (τ - 1) C/τ² - [(α - 1) C - α²N/μ²] / τ²``.
The bracket is ``>= 0`` by the choice of C, and ``(τ - 1)(τ + 1) <= τ²``, so
``y_{t+1} <= C/(τ + 1)``. ∎ The same induction shows ``r_t <= C/(t + E)``: the recursion
curve is never above the closed form.

*On the constant.* The paper writes ``C = max{E‖w_0 - w*‖², ...}``, where ``E`` reads both as
an expectation and as the shift ``E``. The base case of the induction needs the shift:
``C >= E · y_0``. With ``C = max{y_0, ...}`` the bound ``C/E`` is already below ``y_0`` at
``t = 0`` whenever ``y_0`` dominates, so we implement ``E · y_0``.

**Constant step** ``η <= 1/(2L)``. Unrolling (R) with ``a = 1 - μη``::

    y_t <= a^t y_0 + η² N Σ_{k<t} a^k = a^t y_0 + (ηN/μ)(1 - a^t) <= a^t y_0 + ηN/μ.

The middle expression is the recursion curve; the last is the closed form.

**Sparse single-coordinate update (Hogwild!-style, one worker).** Let ``f(·; ξ)`` depend only on
the coordinates in its support ``D_ξ``, ``d_ξ = |D_ξ| <= D``. Each step draws ``ξ``, then ``u``
uniformly from ``D_ξ``, and updates that coordinate alone:
``w_{t+1} = w_t - η_t d_ξ [∇f(w_t; ξ)]_u e_u``. The direction ``g = d_ξ [∇f]_u e_u`` is unbiased,
``E_u g = ∇f(w; ξ)`` (the gradient vanishes off ``D_ξ``), and
``E_u‖g‖² = d_ξ² · (1/d_ξ) Σ_{u ∈ D_ξ} [∇f]_u² = d_ξ ‖∇f(w; ξ)‖² <= D ‖∇f(w; ξ)‖²``. So the lemma
holds for ``g`` with ``4LD`` and ``D · N``, the one-step inequality needs ``η_t <= 1/(2LD)``,
and every result above holds with ``N -> D·N`` and ``L -> L·D`` in the step condition
(``E >= 2αLD/μ``; ``η <= 1/(2LD)``). ``D = 1`` is plain SGD.

Example (strongly convex, ``μ = 1``, ``L = 2``, ``N = 1``, start at distance² 4):

>>> curve = diminishing_bound(mu=1.0, L=2.0, N=1.0, w0_dist2=4.0, steps=1000, alpha=2.0)
>>> curve.E, curve.C  # E = 2αL/μ = 8, C = max(8·4, 4·1/1) = 32
(8.0, 32.0)
>>> float(curve.bound[0]), float(curve.bound[-1])  # 32/8 and 32/1008
(4.0, 0.031746031746031744)
>>> rec = diminishing_recursion(mu=1.0, L=2.0, N=1.0, w0_dist2=4.0, steps=1000, alpha=2.0)
>>> bool((rec.bound <= curve.bound).all())
True
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np

from sgdlab.errors import ConfigError

# Relative slack when comparing a user's E or η against its limit, so that a value computed by
# the user as 2*alpha*L/mu in a different order of operations is not rejected over one ulp.
_REL_TOL = 1e-12


@dataclass(frozen=True, eq=False)
class BoundCurve:
    """A bound on ``E‖w_t - w*‖²`` for ``t = 0, 1, ..., steps``.

    ``kind`` is ``"diminishing"`` (closed form ``C/(t+E)``), ``"constant"`` (closed form
    ``(1-μη)^t y_0 + ηDN/μ``), or one of them with ``"-recursion"`` appended (the tighter
    iterated one-step inequality), or ``"recursion"`` (the one-step inequality for a given step
    sequence). ``N`` is the dense noise constant ``2E‖∇f(w*; ξ)‖²``; the bound uses ``D·N``.
    Fields that do not apply to a kind are ``None``. The arrays are read-only.
    """

    t: np.ndarray
    bound: np.ndarray
    kind: str
    mu: float
    L: float
    N: float
    w0_dist2: float
    D: int = 1
    alpha: float | None = None
    E: float | None = None
    eta: float | None = None
    C: float | None = None

    @property
    def final(self) -> float:
        """The bound after the last step."""
        return float(self.bound[-1])

    @property
    def steps(self) -> int:
        """The number of SGD steps the curve covers (its length minus one)."""
        return int(self.t[-1])


def gradient_second_moment_bound(gap: float | np.ndarray, L: float, N: float) -> np.ndarray:
    """The lemma's bound ``4L (F(w) - F(w*)) + N`` on ``E‖∇f(w; ξ)‖²``.

    ``gap`` is ``F(w) - F(w*) >= 0`` (a scalar or an array of them).

    >>> float(gradient_second_moment_bound(0.5, L=2.0, N=1.0))
    5.0
    """
    _check_positive("L", L)
    _check_nonnegative("N", N)
    gaps = np.asarray(gap, dtype=np.float64)
    if not np.all(np.isfinite(gaps)) or np.any(gaps < 0):
        raise ConfigError(f"Invalid gap: {gap} (F(w) - F(w*) must be finite and >= 0)")
    return 4.0 * L * gaps + N


def noise_constant(grads_at_opt: np.ndarray, weights: np.ndarray | None = None) -> float:
    """``N = 2 E‖∇f(w*; ξ)‖²`` for a finite family of gradients at the optimum.

    ``grads_at_opt`` has one row ``∇f(w*; ξ_i)`` per sample; ``weights`` are the sampling
    probabilities (uniform when ``None``; they must be non-negative and sum to 1).

    >>> noise_constant(np.array([[1.0, 0.0], [-1.0, 0.0]]))
    2.0
    """
    g = np.asarray(grads_at_opt, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] == 0 or not np.all(np.isfinite(g)):
        raise ConfigError(f"Invalid grads_at_opt: need a finite (n, d) array, got shape {g.shape}")
    if weights is None:
        p = np.full(g.shape[0], 1.0 / g.shape[0])
    else:
        p = np.asarray(weights, dtype=np.float64)
        if p.shape != (g.shape[0],) or np.any(p < 0) or not math.isclose(p.sum(), 1.0):
            raise ConfigError(
                f"Invalid weights: need {g.shape[0]} non-negative probabilities summing to 1"
            )
    return float(2.0 * p @ np.einsum("ij,ij->i", g, g))


def min_shift(mu: float, L: float, alpha: float, D: int = 1) -> float:
    """The smallest shift ``E = 2αLD/μ`` for which ``η_0 = α/(μE) <= 1/(2LD)``.

    >>> min_shift(mu=0.5, L=2.0, alpha=2.0, D=3)
    48.0
    """
    _check_problem(mu, L, D)
    _check_alpha(alpha)
    return 2.0 * alpha * L * D / mu


def max_constant_step(L: float, D: int = 1) -> float:
    """The largest step the analysis allows, ``1/(2LD)``.

    >>> max_constant_step(L=2.0, D=2)
    0.125
    """
    _check_positive("L", L)
    _check_D(D)
    return 1.0 / (2.0 * L * D)


def diminishing_step_sizes(
    mu: float, L: float, steps: int, alpha: float = 2.0, E: float | None = None, D: int = 1
) -> np.ndarray:
    """The steps ``η_t = α/(μ(t+E))`` for ``t = 0, ..., steps-1`` (``E`` defaults to its minimum).

    >>> diminishing_step_sizes(mu=1.0, L=1.0, steps=3, alpha=2.0)
    array([0.5       , 0.4       , 0.33333333])
    """
    _check_problem(mu, L, D)
    n = _check_steps(steps)
    shift = _resolve_shift(mu, L, alpha, E, D)
    return alpha / (mu * (np.arange(n, dtype=np.float64) + shift))


def diminishing_constant(
    mu: float,
    L: float,
    N: float,
    w0_dist2: float,
    alpha: float = 2.0,
    E: float | None = None,
    D: int = 1,
) -> float:
    """``C = max{E·‖w_0 - w*‖², α² D N / (μ² (α - 1))}`` of the diminishing-step bound.

    >>> diminishing_constant(mu=1.0, L=1.0, N=3.0, w0_dist2=0.1, alpha=3.0)
    13.5
    """
    _check_problem(mu, L, D)
    _check_start(N, w0_dist2)
    shift = _resolve_shift(mu, L, alpha, E, D)
    return max(shift * w0_dist2, alpha**2 * D * N / (mu**2 * (alpha - 1.0)))


def diminishing_bound(
    mu: float,
    L: float,
    N: float,
    w0_dist2: float,
    steps: int,
    alpha: float = 2.0,
    E: float | None = None,
    D: int = 1,
) -> BoundCurve:
    """The closed form ``E‖w_t - w*‖² <= C/(t+E)`` for ``η_t = α/(μ(t+E))`` (module docstring).

    >>> diminishing_bound(mu=1.0, L=1.0, N=1.0, w0_dist2=1.0, steps=2).bound
    array([1.        , 0.8       , 0.66666667])
    """
    C = diminishing_constant(mu, L, N, w0_dist2, alpha, E, D)
    n = _check_steps(steps)
    shift = _resolve_shift(mu, L, alpha, E, D)
    t = np.arange(n + 1)
    return _curve(t, C / (t + shift), "diminishing", mu, L, N, w0_dist2, D,
                  alpha=alpha, E=shift, C=C)


def diminishing_recursion(
    mu: float,
    L: float,
    N: float,
    w0_dist2: float,
    steps: int,
    alpha: float = 2.0,
    E: float | None = None,
    D: int = 1,
) -> BoundCurve:
    """The iterated one-step inequality (R) along ``η_t = α/(μ(t+E))``; never above ``C/(t+E)``.

    >>> rec = diminishing_recursion(mu=1.0, L=1.0, N=1.0, w0_dist2=1.0, steps=2)
    >>> rec.bound  # η = 1/2, 2/5:  y1 = (1 - 1/2)·1 + 1/4,  y2 = (1 - 2/5)·y1 + 4/25
    array([1.  , 0.75, 0.61])
    """
    etas = diminishing_step_sizes(mu, L, steps, alpha, E, D)
    C = diminishing_constant(mu, L, N, w0_dist2, alpha, E, D)
    bound = _recursion(etas, mu, D * N, w0_dist2)
    return _curve(np.arange(etas.size + 1), bound, "diminishing-recursion", mu, L, N, w0_dist2,
                  D, alpha=alpha, E=_resolve_shift(mu, L, alpha, E, D), C=C)


def constant_bound(
    mu: float, L: float, N: float, w0_dist2: float, steps: int, eta: float, D: int = 1
) -> BoundCurve:
    """The closed form ``(1 - μη)^t ‖w_0 - w*‖² + ηDN/μ`` for a constant ``η <= 1/(2LD)``.

    >>> constant_bound(mu=1.0, L=1.0, N=1.0, w0_dist2=1.0, steps=2, eta=0.5).bound
    array([1.5 , 1.  , 0.75])
    """
    t, log_a = _constant_steps(mu, L, N, w0_dist2, steps, eta, D)
    bound = np.exp(t * log_a) * w0_dist2 + eta * D * N / mu
    return _curve(t, bound, "constant", mu, L, N, w0_dist2, D, eta=eta)


def constant_recursion(
    mu: float, L: float, N: float, w0_dist2: float, steps: int, eta: float, D: int = 1
) -> BoundCurve:
    """(R) unrolled for a constant step: ``a^t y_0 + (ηDN/μ)(1 - a^t)``, ``a = 1 - μη``.

    >>> constant_recursion(mu=1.0, L=1.0, N=1.0, w0_dist2=1.0, steps=2, eta=0.5).bound
    array([1.   , 0.75 , 0.625])
    """
    t, log_a = _constant_steps(mu, L, N, w0_dist2, steps, eta, D)
    bound = np.exp(t * log_a) * w0_dist2 - np.expm1(t * log_a) * (eta * D * N / mu)
    return _curve(t, bound, "constant-recursion", mu, L, N, w0_dist2, D, eta=eta)


def _constant_steps(
    mu: float, L: float, N: float, w0_dist2: float, steps: int, eta: float, D: int
) -> tuple[np.ndarray, float]:
    """Checked inputs of a constant-step curve: the steps ``t`` and ``log(1 - μη)``."""
    _check_problem(mu, L, D)
    _check_start(N, w0_dist2)
    _check_eta(eta, L, D)
    return np.arange(_check_steps(steps) + 1), math.log1p(-mu * eta)


def recursion_bound(
    etas: np.ndarray, mu: float, L: float, N: float, w0_dist2: float, D: int = 1
) -> BoundCurve:
    """(R) iterated along any step sequence with ``0 <= η_t <= 1/(2LD)``.

    ``etas[t]`` is the step taken from ``w_t`` to ``w_{t+1}``; the curve has ``len(etas) + 1``
    points.

    >>> recursion_bound(np.array([0.5, 0.25]), mu=1.0, L=1.0, N=1.0, w0_dist2=1.0).bound
    array([1.   , 0.75 , 0.625])
    """
    _check_problem(mu, L, D)
    _check_start(N, w0_dist2)
    eta = np.asarray(etas, dtype=np.float64)
    if eta.ndim != 1 or not np.all(np.isfinite(eta)) or np.any(eta < 0):
        raise ConfigError("Invalid etas: need a 1-D array of finite, non-negative step sizes")
    limit = max_constant_step(L, D)
    if eta.size and eta.max() > limit * (1.0 + _REL_TOL):
        t = int(eta.argmax())
        raise ConfigError(
            f"Invalid etas[{t}]: {eta[t]} > 1/(2*L*D) = {limit} (L={L}, D={D})"
        )
    bound = _recursion(eta, mu, D * N, w0_dist2)
    return _curve(np.arange(eta.size + 1), bound, "recursion", mu, L, N, w0_dist2, D)


# --- private kernels -------------------------------------------------------------------------


def _recursion_loop(etas: np.ndarray, mu: float, noise: float, y0: float) -> np.ndarray:
    """The specification of (R): ``r_{t+1} = (1 - μη_t) r_t + η_t² · noise``, one step at a time."""
    r = np.empty(len(etas) + 1)
    r[0] = y0
    for t, eta in enumerate(etas):
        r[t + 1] = (1.0 - mu * eta) * r[t] + eta * eta * noise
    return r


def _recursion(etas: np.ndarray, mu: float, noise: float, y0: float) -> np.ndarray:
    """(R) vectorised; matches :func:`_recursion_loop` (tested in float64).

    With ``a_s = 1 - μη_s``, ``b_s = η_s² · noise`` and ``P_t = Π_{s<t} a_s``, the solution is
    ``r_t = P_t (y_0 + Σ_{s<t} b_s / P_{s+1})``. The products under- and overflow for long runs
    (``P_t ≈ (E/(t+E))^α``), so the sum is taken in log space with a running log-sum-exp.
    """
    log_a = np.log1p(-mu * etas)
    log_p = np.concatenate(([0.0], np.cumsum(log_a)))
    with np.errstate(divide="ignore"):  # log(0) = -inf is exact for y0 = 0 or noise = 0
        terms = np.concatenate(([np.log(y0)], np.log(etas * etas * noise) - log_p[1:]))
    acc = np.logaddexp.accumulate(terms)
    r = np.exp(log_p + acc)
    r[0] = y0  # exp(log(y0)) may differ from y0 in the last bit
    return r


def _curve(
    t: np.ndarray,
    bound: np.ndarray,
    kind: str,
    mu: float,
    L: float,
    N: float,
    w0_dist2: float,
    D: int,
    *,
    alpha: float | None = None,
    E: float | None = None,
    eta: float | None = None,
    C: float | None = None,
) -> BoundCurve:
    t = np.asarray(t, dtype=np.int64)
    bound = np.asarray(bound, dtype=np.float64)
    t.setflags(write=False)
    bound.setflags(write=False)
    return BoundCurve(
        t=t, bound=bound, kind=kind, mu=float(mu), L=float(L), N=float(N),
        w0_dist2=float(w0_dist2), D=int(D),
        alpha=None if alpha is None else float(alpha),
        E=None if E is None else float(E),
        eta=None if eta is None else float(eta),
        C=None if C is None else float(C),
    )


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _check_positive(name: str, value: float) -> None:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"Invalid {name}: {value} (must be finite and > 0)")


def _check_nonnegative(name: str, value: float) -> None:
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"Invalid {name}: {value} (must be finite and >= 0)")


def _check_D(D: int) -> None:
    if isinstance(D, bool) or not isinstance(D, int | np.integer) or D < 1:
        raise ConfigError(f"Invalid D: {D} (the largest support size, an integer >= 1)")


def _check_problem(mu: float, L: float, D: int) -> None:
    _check_positive("mu", mu)
    _check_positive("L", L)
    if mu > L:
        raise ConfigError(
            f"Invalid mu, L: mu={mu} > L={L} (a mu-strongly convex, L-smooth F has mu <= L)"
        )
    _check_D(D)


def _check_start(N: float, w0_dist2: float) -> None:
    _check_nonnegative("N", N)
    _check_nonnegative("w0_dist2", w0_dist2)


def _check_alpha(alpha: float) -> None:
    if not _is_real(alpha) or not math.isfinite(alpha) or alpha <= 1:
        raise ConfigError(f"Invalid alpha: {alpha} (the diminishing step needs alpha > 1)")


def _check_eta(eta: float, L: float, D: int) -> None:
    _check_positive("eta", eta)
    limit = 1.0 / (2.0 * L * D)
    if eta > limit * (1.0 + _REL_TOL):
        raise ConfigError(f"Invalid eta: {eta} > 1/(2*L*D) = {limit} (L={L}, D={D})")


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool):
        raise ConfigError(f"Invalid steps: {steps} (an integer >= 0)")
    try:
        n = operator.index(steps)
    except TypeError:
        raise ConfigError(f"Invalid steps: {steps} (an integer >= 0)") from None
    if n < 0:
        raise ConfigError(f"Invalid steps: {steps} (an integer >= 0)")
    return n


def _resolve_shift(mu: float, L: float, alpha: float, E: float | None, D: int) -> float:
    """``E`` itself, checked against ``2αLD/μ``, or that minimum when ``E`` is ``None``."""
    e_min = min_shift(mu, L, alpha, D)
    if E is None:
        return e_min
    _check_positive("E", E)
    if E < e_min * (1.0 - _REL_TOL):
        raise ConfigError(
            f"Invalid E: {E} < 2*alpha*L*D/mu = {e_min} (alpha={alpha}, L={L}, D={D}, mu={mu}); "
            "a smaller E makes the first step alpha/(mu*E) exceed 1/(2*L*D)"
        )
    return float(E)


__all__ = [
    "BoundCurve",
    "constant_bound",
    "constant_recursion",
    "diminishing_bound",
    "diminishing_constant",
    "diminishing_recursion",
    "diminishing_step_sizes",
    "gradient_second_moment_bound",
    "max_constant_step",
    "min_shift",
    "noise_constant",
    "recursion_bound",
]
