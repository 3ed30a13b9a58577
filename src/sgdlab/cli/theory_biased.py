"""CLI glue for the biased-SGD analysis: JSON-ready reports and their plots.

Plain functions behind two commands (their options are generated in ``cli/theory.py``)::

    sgdlab theory biased-sgd --case {smooth,smooth-convex,bounded} --L L --m M --alpha A
        --delta D [--c C] [--sigma2 S] [--beta B] [--K K] [--U U] [--solver {clarabel,scs}] [--json]
    sgdlab theory schedule --case ... --L L --m M --delta D --c C --sigma2 S --U0 U0
        --steps N [--beta B] [--K K] [--json] [--plot FILE]

Every value is a plain float, int, str, bool, list or ``None`` (``nan``/``inf`` become ``None``),
so ``json.dumps`` takes the dicts as they are.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from sgdlab.errors import ConfigError
from sgdlab.theory.biased_sgd import (
    BiasedSGDSetting,
    OneStepBound,
    accuracy_floor,
    contraction_threshold,
    one_step_bound,
    one_step_closed_form,
    sequential_schedule,
)

# How many (k, α_k, U_k) rows a schedule report lists; the full arrays can be 10⁴ long.
_SCHEDULE_ROWS = 101


def biased_sgd_report(
    case: str,
    L: float,
    m: float,
    alpha: float,
    delta: float,
    c: float = 0.0,
    sigma2: float = 0.0,
    beta: float | None = None,
    K: float | None = None,
    solver: str = "clarabel",
    U: float | None = None,
) -> dict[str, Any]:
    """One-step bound ``E‖x⁺ − x*‖² ≤ ρ²E‖x − x*‖² + H`` for step ``alpha``: SDP, closed form.

    Without ``U`` the least ``ρ²`` and its ``H``; with ``U`` the tangent there (needed when
    ``delta = 0 < c``).

    >>> r = biased_sgd_report("smooth", L=2.0, m=1.0, alpha=0.1, delta=0.0, sigma2=1.0)
    >>> round(r["rho2"], 6), round(r["H"], 6), r["solver"], round(r["closed_form"]["rho2"], 12)
    (0.88, 0.02, 'clarabel', 0.88)
    """
    setting = BiasedSGDSetting(case, m=m, L=L, delta=delta, c=c, sigma2=sigma2, beta=beta, K=K)
    sdp = one_step_bound(setting, alpha, U=U, solver=solver)
    closed = one_step_closed_form(setting, alpha, U=U)
    return {
        "case": case,
        "alpha": alpha,
        **_setting_dict(setting),
        "U": U,
        **_bound_dict(sdp),
        "closed_form": None if closed is None else _bound_dict(closed),
        "contracts": bool(sdp.feasible and sdp.rho2 < 1.0),
        "floor": _num(accuracy_floor(setting)),
        "delta_threshold": contraction_threshold(setting),
    }


def schedule_report(
    case: str,
    L: float,
    m: float,
    delta: float,
    c: float,
    sigma2: float,
    U0: float,
    steps: int,
    plot: Path | None = None,
    beta: float | None = None,
    K: float | None = None,
    solver: str = "clarabel",
) -> dict[str, Any]:
    """``U_{k+1} = min_α (ρ²U_k + H)`` from ``U0``: the bound curve, the steps α_k, the floor.

    ``plot`` writes a figure: ρ² against α for several δ, U_k against k with the floor, and α_k.

    >>> r = schedule_report("smooth", 1.0, 1.0, 0.0, 0.0, 1.0, U0=1.0, steps=2)
    >>> r["method"], [round(a, 6) for a in r["alphas"]], round(r["final_bound"], 6)
    ('closed-form', [0.25, 0.214286], 0.589286)
    """
    setting = BiasedSGDSetting(case, m=m, L=L, delta=delta, c=c, sigma2=sigma2, beta=beta, K=K)
    t0 = time.perf_counter()
    sch = sequential_schedule(setting, U0, steps, solver=solver)
    seconds = time.perf_counter() - t0
    rows = np.unique(np.linspace(0, steps, min(_SCHEDULE_ROWS, steps + 1)).round().astype(int))
    report: dict[str, Any] = {
        "case": case,
        **_setting_dict(setting),
        "U0": U0,
        "steps": steps,
        "method": sch.method,
        "seconds": seconds,
        "final_bound": float(sch.bounds[-1]),
        "floor": _num(sch.floor),
        "delta_threshold": contraction_threshold(setting),
        "k": rows.tolist(),
        "bounds": sch.bounds[rows].tolist(),
        "alphas": sch.alphas[rows[rows < steps]].tolist(),
        "plot": None,
    }
    if plot is not None:
        _plot_schedule(setting, sch.alphas, sch.bounds, sch.floor, Path(plot))
        report["plot"] = str(plot)
    return report


def _rate_tradeoff(
    setting: BiasedSGDSetting, alphas: np.ndarray, deltas: list[float]
) -> dict[float, np.ndarray]:
    """Least ``ρ²`` against ``α`` for each ``δ`` (closed form where it exists, else the SDP)."""
    curves: dict[float, np.ndarray] = {}
    for d in deltas:
        s = BiasedSGDSetting(setting.case, setting.m, setting.L, d, 0.0, 0.0, setting.beta, None)
        rho2 = []
        for a in alphas:
            b = one_step_closed_form(s, float(a)) or one_step_bound(s, float(a))
            rho2.append(b.rho2)
        curves[d] = np.asarray(rho2)
    return curves


def _plot_schedule(
    setting: BiasedSGDSetting, alphas: np.ndarray, bounds: np.ndarray, floor: float, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thr = contraction_threshold(setting)
    deltas = sorted({0.0, setting.delta, 0.5 * thr, 0.9 * thr})
    grid = np.linspace(1e-3, 1.5 / setting.L, 40)
    fig, (ax_rate, ax_u, ax_a) = plt.subplots(1, 3, figsize=(15, 4.2))
    for d, rho2 in _rate_tradeoff(setting, grid, deltas).items():
        ax_rate.plot(grid, rho2, label=f"δ = {d:.3g}")
    ax_rate.axhline(1.0, color="k", lw=0.8, ls=":")
    ax_rate.set(xlabel="step size α", ylabel="least ρ²", title="rate against step size")
    ax_rate.set_ylim(top=min(2.0, ax_rate.get_ylim()[1]))
    ax_rate.legend()
    k = np.arange(bounds.size)
    ax_u.loglog(k[1:], bounds[1:], label="bound U_k")
    if math.isfinite(floor) and floor > 0:
        ax_u.axhline(floor, color="r", ls="--", label=f"floor {floor:.3g}")
    ax_u.set(xlabel="k", ylabel="E‖x_k − x*‖² ≤ U_k", title="sequential bound")
    ax_u.legend()
    ax_a.loglog(k[1:], np.maximum(alphas, 1e-300), label="α_k")
    ax_a.set(xlabel="k", ylabel="α_k", title="selected step sizes")
    fig.suptitle(
        f"biased SGD, case {setting.case}, m={setting.m}, L={setting.L}, δ={setting.delta}"
    )
    fig.tight_layout()
    if path.is_dir():  # savefig would write <path>.png beside it and report <path>
        plt.close(fig)
        raise ConfigError(f"Invalid plot: {path} is a folder (give a file name)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bound_dict(b: OneStepBound) -> dict[str, Any]:
    return {
        "rho2": _num(b.rho2),
        "H": _num(b.H),
        "solver": b.solver,
        "status": b.status,
        "feasible": b.feasible,
        "multipliers": [_num(v) for v in b.multipliers],
        "residual": _num(b.residual),
    }


def _setting_dict(s: BiasedSGDSetting) -> dict[str, Any]:
    return {
        "m": s.m,
        "L": s.L,
        "delta": s.delta,
        "c": s.c,
        "sigma2": s.sigma2,
        "beta": s.beta,
        "K": s.K,
    }


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


__all__ = ["biased_sgd_report", "schedule_report"]
