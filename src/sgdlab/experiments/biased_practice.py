r"""Biased SGD against practice: measured ``E‖x_k − x*‖²`` under the bound of the LMI (S4).

The method (:mod:`sgdlab.theory.biased_sgd`, Hu, Seiler, Lessard) is
``x_{k+1} = x_k − α_k(∇f_{i_k}(x_k) + e_k)``, ``i_k`` uniform, with an error of the budget
``‖e_k‖² ≤ δ²‖∇f_{i_k}(x_k)‖² + c²``. Here it runs for real, in float64 on a flat θ, on
finite sums whose per-sample gradients have closed forms:

* **logistic regression** (a dense linear workload, ``logreg-fmnist``, ``logreg-breast-cancer``):
  ``θ = [W | b]`` one row per output, ``x̃ = (x, 1)``, logits ``z = Θx̃``, residual
  ``r = softmax(z) − onehot(y)`` (one logit: ``r = σ(z) − y``), and
  ``∇f_i(θ) = r_i x̃_iᵀ + λθ``. m = λ, L and ``σ² = E‖∇f_i(θ*)‖²`` are the estimated constants
  of :func:`sgdlab.workloads.constants.estimate_constants`; θ* is the workload's optimum;
* **a quadratic** ``f_i(x) = ½(a_iᵀx − b_i)² + (λ/2)‖x‖²`` (:func:`quadratic_problem`):
  ``∇f_i(x) = a_i(a_iᵀx − b_i) + λx``, ``∇²f_i = a_ia_iᵀ + λI``, so every ``f_i`` is convex and
  ``(‖a_i‖² + λ)``-smooth: ``L = maxᵢ‖a_i‖² + λ``; ``f`` has Hessian ``AᵀA/n + λI``, so
  ``m = λ_min(AᵀA/n) + λ``, and ``x* = (AᵀA/n + λI)⁻¹Aᵀb/n`` exactly.

Both are sums of convex L-smooth components, so the ``smooth-convex`` case applies as well as
``smooth``; ``smooth-convex`` is the one that fits (its contraction threshold ``δ < √(m/(2L))``
against ``m/(√2 L)``, and its steps reach ``1/(2L)`` instead of ``~m/L²``).

Why the bound holds for the run
-------------------------------
For every certificate ``(ρ², H)`` of the LMI, ``E[‖x_{k+1} − x*‖² | x_k] ≤ ρ²‖x_k − x*‖² + H``;
taking expectations and the least over the certificates gives ``E‖x_{k+1} − x*‖² ≤
V_α(E‖x_k − x*‖²)`` with ``V_α = min(ρ²U + H)`` (the closed form ``worst_case_value``). ``V_α`` is
nondecreasing in ``U``, so from ``U_0 = ‖x_0 − x*‖²`` (every run starts at ``x_0 = 0``, so this
is exact) the curve ``U_{k+1} = V_{α_k}(U_k)`` bounds ``E‖x_k − x*‖²`` for any steps ``α_k``: the
sequential schedule's (where ``U_{k+1}`` is the schedule's own bound) or a constant ``α``. Where
``V`` has no closed form the tangent certificate at ``U_0`` is used for every step (one SDP;
any certificate is valid at every ``U``). The seeds estimate the expectation.

Error directions (the whole budget ``R = √(δ²‖g‖² + c²)`` every step)
---------------------------------------------------------------------
* ``random``: ``e = R u``, ``u`` uniform on the sphere. With ``v = x − x* − αg``,
  ``E_u‖v − αRu‖² = ‖v‖² + α²R²``: the error only adds variance, whose stationary share is
  ``O(αc²/m)`` and vanishes with ``α``;
* ``adversarial``: ``e = −R v/‖v‖`` (away from x*, after the gradient step), so that
  ``‖x⁺ − x*‖ = ‖v‖ + αR``, the largest any admissible ``e`` can make it (triangle inequality),
  and the alignment the LMI's dual solution takes. On ``f = (m/2)‖x‖²`` with ``δ = σ = 0`` it
  gives ``‖x⁺‖ = (1 − αm)‖x‖ + αc``, fixed point ``‖x‖ = c/m``: exactly the floor ``c²/m²``.
  This is the direction that reaches the floor; the random one stays far below it.
* ``none``: ``e = 0`` (plain SGD, for reference).

A *wrong* bound checks that the comparison can fail: the same recursion without the error
term (``δ = c = 0``), which the adversarial run must cross.

>>> p = quadratic_problem(n=50, d=4, lam=0.2, seed=0)
>>> runs = compare_to_bound(p, "smooth-convex", delta=0.0, c=0.05, steps=300, seeds=4)
>>> [(r.plan, r.direction, r.under_bound) for r in runs]
... # doctest: +NORMALIZE_WHITESPACE
[('schedule', 'random', True), ('schedule', 'adversarial', True),
 ('constant', 'random', True), ('constant', 'adversarial', True)]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sgdlab.errors import ConfigError
from sgdlab.theory.biased_sgd import (
    BiasedSGDSetting,
    accuracy_floor,
    contraction_threshold,
    one_step_bound,
    sequential_schedule,
    worst_case_value,
)
from sgdlab.workloads.base import SparseRows, Workload

_DIRECTIONS = ("none", "random", "adversarial")
PLANS = ("schedule", "constant")

Gradient = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class FiniteSumProblem:
    """``f = (1/n) Σ f_i`` on a flat float64 θ: constants, ``θ*`` and per-sample gradients.

    ``grad(theta, idx)`` takes ``theta`` of shape ``(S, p)`` (one row per seed) and ``idx`` of
    shape ``(S,)`` and returns ``∇f_{idx[s]}(theta[s])`` row by row.
    """

    name: str
    m: float
    L: float
    sigma2: float
    optimum: np.ndarray = field(repr=False)
    n: int
    grad: Gradient = field(repr=False)

    def setting(self, case: str, delta: float = 0.0, c: float = 0.0) -> BiasedSGDSetting:
        """The theory's setting for this problem and error model."""
        return BiasedSGDSetting(case, m=self.m, L=self.L, delta=delta, c=c, sigma2=self.sigma2)


def quadratic_problem(
    n: int = 200, d: int = 20, lam: float = 0.05, noise: float = 0.5, seed: int = 0
) -> FiniteSumProblem:
    """Least squares ``f_i(x) = ½(a_iᵀx − b_i)² + (λ/2)‖x‖²``, ``a_i ~ N(0, I/d)`` (seeded).

    ``b = A x_true + noise·ξ``; the constants are exact (module docstring).

    >>> p = quadratic_problem(n=100, d=5, lam=0.1)
    >>> p.m > 0.1, p.L > p.m, round(float(np.mean(p.grad(np.tile(p.optimum, (100, 1)),
    ...     np.arange(100)).mean(0) ** 2)), 12)
    (True, True, 0.0)
    """
    for name, value in (("n", n), ("d", d)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"Invalid {name}: {value}")
    if not (math.isfinite(lam) and lam > 0):
        raise ConfigError(f"Invalid lam: {lam}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ConfigError(f"Invalid noise: {noise}")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d)) / math.sqrt(d)
    b = a @ rng.standard_normal(d) + noise * rng.standard_normal(n)
    hess = a.T @ a / n + lam * np.eye(d)
    x_star = np.linalg.solve(hess, a.T @ b / n)

    def grad(theta: np.ndarray, idx: np.ndarray) -> np.ndarray:
        rows = a[idx]
        resid = np.einsum("sd,sd->s", rows, theta) - b[idx]
        return rows * resid[:, None] + lam * theta

    g_star = grad(np.tile(x_star, (n, 1)), np.arange(n))
    return FiniteSumProblem(
        name=f"quadratic(n={n}, d={d}, λ={lam:g})",
        m=float(np.linalg.eigvalsh(hess)[0]),
        L=float((a * a).sum(1).max() + lam),
        sigma2=float((g_star * g_star).sum(1).mean()),
        optimum=x_star,
        n=n,
        grad=grad,
    )


def logistic_problem(
    workload: Workload, rows: int | None = None, seed: int = 0
) -> FiniteSumProblem:
    """A dense linear workload as a finite sum, constants from ``estimate_constants``.

    ``rows`` keeps a seeded random subset of the training set (its own optimum and constants;
    the optimum is cached like the workload's).
    """
    from sgdlab.workloads.constants import estimate_constants
    from sgdlab.workloads.convex import smoothness_bound

    if not workload.convex or isinstance(workload.x_train, SparseRows):
        raise ConfigError(
            f"workload {workload.name!r}: needs a dense convex linear workload (logreg-*)"
        )
    if rows is not None:
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows:
            raise ConfigError(f"Invalid rows: {rows}")
        if rows < workload.num_train:
            keep = np.random.default_rng(seed).permutation(workload.num_train)[:rows]
            keep.sort()
            x, y = workload.x_train[keep], workload.y_train[keep]
            workload = replace(
                workload,
                name=workload.name,
                x_train=x,
                y_train=y,
                L=smoothness_bound(x, workload.num_classes, workload.l2),
                options={**workload.options, "rows": rows, "rows_seed": seed},
            )
    consts = estimate_constants(workload)
    weight, bias = (np.asarray(p, dtype=np.float64) for p in workload.optimum().params)
    outputs = weight.shape[0]
    theta_star = np.concatenate([weight, bias.reshape(outputs, 1)], axis=1).ravel()
    x_train = workload.x_train
    if isinstance(x_train, SparseRows):  # excluded above; narrows the type
        raise ConfigError(f"workload {workload.name!r}: needs dense rows")
    x_all = x_train.flatten(1).numpy()  # float32, gathered S rows at a time
    y_all = workload.y_train.numpy()
    lam = float(workload.l2)
    binary = workload.num_classes == 2

    def grad(theta: np.ndarray, idx: np.ndarray) -> np.ndarray:
        s = len(idx)
        x_aug = np.empty((s, x_all.shape[1] + 1))
        x_aug[:, :-1] = x_all[idx]
        x_aug[:, -1] = 1.0
        big = theta.reshape(s, outputs, -1)
        z = np.einsum("scd,sd->sc", big, x_aug)
        if binary:
            r = 1.0 / (1.0 + np.exp(-z)) - y_all[idx, None]
        else:
            z = z - z.max(1, keepdims=True)
            p = np.exp(z)
            r = p / p.sum(1, keepdims=True)
            r[np.arange(s), y_all[idx]] -= 1.0
        return (r[:, :, None] * x_aug[:, None, :] + lam * big).reshape(s, -1)

    options = ", ".join(f"{k}={v}" for k, v in workload.options.items())
    return FiniteSumProblem(
        name=f"{workload.name}({options})",
        m=consts.mu,
        L=consts.L,
        sigma2=consts.grad_sq,
        optimum=theta_star,
        n=workload.num_train,
        grad=grad,
    )


def run_biased_sgd(
    problem: FiniteSumProblem,
    alphas: np.ndarray,
    *,
    delta: float,
    c: float,
    direction: str,
    seeds: int,
    seed: int = 0,
) -> np.ndarray:
    """Run ``seeds`` independent chains from ``x_0 = 0``; ``‖x_k − x*‖²``, shape (K + 1, seeds).

    Step ``k`` uses ``alphas[k]`` and the error ``e_k`` of ``direction`` with the whole budget
    (module docstring). The chains share nothing but the problem; they run side by side.
    """
    if direction not in _DIRECTIONS:
        raise ConfigError(
            f"Invalid direction: {direction!r} (choose from {', '.join(_DIRECTIONS)})"
        )
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"Invalid seeds: {seeds}")
    for name, value in (("delta", delta), ("c", c)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"Invalid {name}: {value}")
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or not np.all(np.isfinite(alphas)) or np.any(alphas < 0):
        raise ConfigError("Invalid alphas: a 1-D array of finite steps >= 0")
    rng = np.random.default_rng(seed)
    x_star = problem.optimum
    theta = np.zeros((seeds, x_star.size))
    out = np.empty((alphas.size + 1, seeds))
    out[0] = float(x_star @ x_star)
    for k, alpha in enumerate(alphas):
        g = problem.grad(theta, rng.integers(problem.n, size=seeds))
        if direction != "none":
            budget = np.sqrt(delta**2 * (g * g).sum(1) + c**2)
            if direction == "random":
                u = rng.standard_normal(theta.shape)
            else:
                u = theta - x_star - alpha * g
                u *= -1.0
            norm = np.sqrt((u * u).sum(1))
            g = g + u * (budget / np.where(norm > 0, norm, 1.0))[:, None]
        theta -= alpha * g
        diff = theta - x_star
        out[k + 1] = (diff * diff).sum(1)
    return out


def bound_curve(setting: BiasedSGDSetting, U0: float, alphas: np.ndarray) -> np.ndarray:
    """``U_{k+1} = V_{α_k}(U_k)`` from ``U0`` (module docstring); ``V`` by closed form or SDP.

    >>> s = BiasedSGDSetting("smooth", 1.0, 1.0, sigma2=1.0)
    >>> bound_curve(s, 1.0, np.array([0.25, 0.25])).round(6).tolist()
    [1.0, 0.75, 0.59375]
    """
    bounds = np.empty(len(alphas) + 1)
    bounds[0] = U = float(U0)
    certificates: dict[float, tuple[float, float]] = {}
    for k, alpha in enumerate(np.asarray(alphas, dtype=np.float64)):
        a = float(alpha)
        if a == 0.0:
            bounds[k + 1] = U
            continue
        value = worst_case_value(setting, a, U)
        if value is None:
            if a not in certificates:
                cert = one_step_bound(setting, a, U=max(float(U0), 1e-12))
                certificates[a] = (cert.rho2, cert.H)
            rho2, H = certificates[a]
            value = rho2 * U + H
        bounds[k + 1] = U = value
    return bounds


@dataclass(frozen=True, eq=False)
class _PracticeRun:
    """One step plan and error direction: the measured ``‖x_k − x*‖²`` and its bounds."""

    plan: str
    direction: str
    alphas: np.ndarray = field(repr=False)
    dist2: np.ndarray = field(repr=False)  # (K + 1, seeds)
    bound: np.ndarray = field(repr=False)  # the bound with the error term, (K + 1,)
    unbiased: np.ndarray = field(repr=False)  # the wrong bound: no error term, (K + 1,)
    floor: float

    @property
    def mean(self) -> np.ndarray:
        return self.dist2.mean(1)

    @property
    def under_bound(self) -> bool:
        """The mean over seeds is under the bound at every step."""
        return bool(np.all(self.mean <= self.bound))

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures of this run."""
        mean = self.mean
        tail = mean[-max(1, mean.size // 10):].mean()  # the last tenth: less seed noise
        return {
            "plan": self.plan,
            "direction": self.direction,
            "seeds": int(self.dist2.shape[1]),
            "steps": int(self.alphas.size),
            "alpha first": float(self.alphas[0]),
            "alpha last": float(self.alphas[-1]),
            "under bound": self.under_bound,
            # From k = 1: at k = 0 both are ‖x*‖² and the ratio is 1 by construction.
            "max mean/bound": float((mean[1:] / self.bound[1:]).max()),
            "seeds under bound": int(np.all(self.dist2 <= self.bound[:, None], 0).sum()),
            "final mean": float(mean[-1]),
            "final bound": float(self.bound[-1]),
            "floor": _num(self.floor),
            "tail mean/floor": _num(tail / self.floor) if self.floor > 0 else None,
            "max mean/unbiased bound": float((mean[1:] / self.unbiased[1:]).max()),
        }


def compare_to_bound(
    problem: FiniteSumProblem,
    case: str,
    *,
    delta: float,
    c: float,
    steps: int,
    seeds: int = 8,
    alpha: float | None = None,
    directions: Sequence[str] = ("random", "adversarial"),
    plans: Sequence[str] = PLANS,
    seed: int = 0,
) -> list[_PracticeRun]:
    """Each plan × direction: run it, and the bound (and the wrong bound) for its steps.

    ``schedule``: the sequential steps ``α_k`` of :func:`sequential_schedule` and its bound;
    ``constant``: ``alpha`` at every step (default: the schedule's first step).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"Invalid steps: {steps}")
    for plan in plans:
        if plan not in PLANS:
            raise ConfigError(f"Invalid plan: {plan!r} (choose from {', '.join(PLANS)})")
    setting = problem.setting(case, delta, c)
    unbiased = problem.setting(case)
    U0 = float(problem.optimum @ problem.optimum)
    schedule = sequential_schedule(setting, U0, steps)
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"Invalid alpha: {alpha}")
    runs = []
    for plan in plans:
        if plan == "schedule":
            alphas, bound = np.asarray(schedule.alphas), np.asarray(schedule.bounds)
        else:
            a = float(schedule.alphas[0]) if alpha is None else alpha
            alphas = np.full(steps, a)
            bound = bound_curve(setting, U0, alphas)
        wrong = bound_curve(unbiased, U0, alphas)
        for i, direction in enumerate(directions):
            dist2 = run_biased_sgd(problem, alphas, delta=delta, c=c, direction=direction,
                                   seeds=seeds, seed=seed + 1000 * i)
            runs.append(_PracticeRun(plan, direction, alphas, dist2, bound, wrong, schedule.floor))
    return runs


def practice_report(
    problem: FiniteSumProblem,
    case: str = "smooth-convex",
    *,
    delta: float = 0.0,
    c: float | None = None,
    steps: int = 4000,
    seeds: int = 8,
    alpha: float | None = None,
    plot: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`compare_to_bound` as a JSON-ready dict, and its figure at ``plot``.

    ``c=None`` picks ``c = m√(U0/10)``: the ``δ = 0`` floor ``c²/m²`` is then a tenth of
    ``U0 = ‖x*‖²``, low enough to see the bound fall and high enough to see the floor.
    """
    U0 = float(problem.optimum @ problem.optimum)
    c = problem.m * math.sqrt(U0 / 10.0) if c is None else c
    t0 = time.perf_counter()
    runs = compare_to_bound(problem, case, delta=delta, c=c, steps=steps, seeds=seeds,
                            alpha=alpha, seed=seed)
    setting = problem.setting(case, delta, c)
    report: dict[str, Any] = {
        "problem": problem.name, "case": case, "m": problem.m, "L": problem.L,
        "sigma2": problem.sigma2, "delta": delta, "c": c, "U0": U0, "steps": steps,
        "seeds": seeds, "floor": _num(accuracy_floor(setting)),
        "delta_threshold": contraction_threshold(setting),
        "seconds": time.perf_counter() - t0,
        "rows": [r.summary() for r in runs], "plot": None,
    }
    if plot is not None:
        report["plot"] = str(_plot_practice(runs, report, Path(plot)))
    return report


def _plot_practice(runs: Sequence[_PracticeRun], report: dict[str, Any], path: Path) -> Path:
    """One panel per step plan: the bound, the wrong bound, the floor, each measured mean."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plans = list(dict.fromkeys(r.plan for r in runs))
    fig = Figure(figsize=(6.2 * len(plans), 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    for j, plan in enumerate(plans):
        ax = fig.add_subplot(1, len(plans), j + 1)
        mine = [r for r in runs if r.plan == plan]
        k = np.arange(mine[0].bound.size) + 1
        ax.loglog(k, mine[0].bound, color="k", lw=2, label="bound (LMI, estimated constants)")
        ax.loglog(k, mine[0].unbiased, color="grey", ls=":", lw=1.5,
                  label="wrong bound: no error term")
        if mine[0].floor > 0 and math.isfinite(mine[0].floor):
            ax.axhline(mine[0].floor, color="r", ls="--", lw=1, label="floor")
        for i, r in enumerate(mine):
            ax.loglog(k, r.mean, color=f"C{i}", lw=1.4, label=f"{r.direction} e_k: mean")
            ax.fill_between(k, r.dist2.min(1), r.dist2.max(1), color=f"C{i}", alpha=0.2)
        a = mine[0].alphas
        step = "sequential α_k" if plan == "schedule" else f"constant α = {a[0]:.3g}"
        ax.set_title(f"{step}, {mine[0].dist2.shape[1]} seeds", fontsize=10)
        ax.set_xlabel("k + 1")
        ax.set_ylabel("‖x_k − x*‖²")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"biased SGD on {report['problem']}, case {report['case']}: "
                 f"m={report['m']:.3g}, L={report['L']:.3g}, σ²={report['sigma2']:.3g}, "
                 f"δ={report['delta']:.3g}, c={report['c']:.3g}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def biased_practice_showcase(ctx: Any) -> Any:
    """``make demo``: breast cancer (λ = 0.5), one bound over the measured runs, ~2 s."""
    from sgdlab.report.sections import Section
    from sgdlab.workloads import get_workload

    problem = logistic_problem(get_workload("logreg-breast-cancer", l2=0.5))
    rep = practice_report(problem, "smooth-convex", steps=4000, seeds=5,
                          plot=ctx.out / "biased-sgd" / "biased-practice.png")
    under = all(r["under bound"] for r in rep["rows"])
    adv = [r for r in rep["rows"] if r["direction"] == "adversarial"]
    text = (f"Biased SGD on {rep['problem']} with an absolute error c={rep['c']:.3g}: the mean "
            f"‖x_k − x*‖² over {rep['seeds']} seeds against the LMI bound from the estimated "
            f"constants (case smooth-convex); under the bound at every step: {under}. The "
            f"adversarial error reaches {adv[0]['tail mean/floor']:.2f} of the floor and crosses "
            f"the bound without the error term ({adv[0]['max mean/unbiased bound']:.2g}x).")
    keep = ("plan", "direction", "alpha first", "under bound", "max mean/bound", "final mean",
            "final bound", "floor", "tail mean/floor", "max mean/unbiased bound")
    rows = [{k: r[k] for k in keep} for r in rep["rows"]]
    return Section(title="Biased SGD against practice (S4)", text=text, rows=rows,
                   images=[Path(rep["plot"])])


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


__all__ = [
    "PLANS",
    "FiniteSumProblem",
    "biased_practice_showcase",
    "bound_curve",
    "compare_to_bound",
    "logistic_problem",
    "practice_report",
    "quadratic_problem",
    "run_biased_sgd",
]
