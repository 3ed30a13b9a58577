"""``sgdlab theory sgd-bound``: the SGD bounds of Nguyen et al. (2018) as a report and a plot.

:func:`sgd_bound_report` turns the problem constants into a JSON-ready dict (constants, C, the
final values, a log-subsampled curve) and optionally draws the closed-form bound, the tighter
recursion curve and a measured ``E‖w_t - w*‖²`` on log-log axes. The math lives in
:mod:`sgdlab.theory.sgd_bounds`; this module only chooses, checks and presents.

>>> rep = sgd_bound_report(mu=1.0, L=2.0, N=1.0, w0_dist2=4.0, steps=1000)
>>> rep["E"], rep["C"], round(rep["final"]["bound"], 6)
(8.0, 32.0, 0.031746)
>>> rep["final"]["recursion"] <= rep["final"]["bound"]
True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sgdlab.errors import ConfigError
from sgdlab.theory.sgd_bounds import (
    BoundCurve,
    constant_bound,
    constant_recursion,
    diminishing_bound,
    diminishing_recursion,
    max_constant_step,
)

SCHEDULES = ("diminishing", "constant")


def sgd_bound_report(
    mu: float,
    L: float,
    N: float,
    w0_dist2: float,
    steps: int,
    schedule: str = "diminishing",
    alpha: float = 2.0,
    E: float | None = None,
    eta: float | None = None,
    D: int = 1,
    plot: Path | None = None,
    measured: np.ndarray | None = None,
    points: int = 200,
) -> dict[str, Any]:
    """Bounds on ``E‖w_t - w*‖²`` for ``t = 0..steps`` as a JSON-ready dict.

    ``schedule="diminishing"`` uses ``η_t = α/(μ(t+E))`` (``E`` defaults to ``2αLD/μ``; ``eta``
    must be left out); ``"constant"`` uses ``eta`` (default ``1/(2LD)``, the largest allowed;
    ``E`` must be left out). ``D > 1`` is the sparse single-coordinate update. ``measured``
    holds ``E‖w_t - w*‖²`` for ``t = 0..len-1`` (at most ``steps + 1`` values); the report says
    whether it stays under both curves. ``points`` caps the log-spaced curve in the dict.
    ``plot`` writes a PNG (or any format matplotlib knows from the suffix) and is returned as
    a string under ``"plot"``.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"Invalid schedule: {schedule!r} (choose 'diminishing' or 'constant')")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ConfigError(f"Invalid points: {points} (an integer >= 2)")
    closed, recursion = _curves(mu, L, N, w0_dist2, steps, schedule, alpha, E, eta, D)
    meas = None if measured is None else _check_measured(measured, closed.steps)
    idx = _log_indices(closed.steps, points)
    report: dict[str, Any] = {
        "schedule": schedule,
        "mu": closed.mu,
        "L": closed.L,
        "N": closed.N,
        "D": closed.D,
        "noise": closed.D * closed.N,
        "w0_dist2": closed.w0_dist2,
        "steps": closed.steps,
        "alpha": closed.alpha,
        "E": closed.E,
        "eta": closed.eta,
        "eta0": closed.alpha / (closed.mu * closed.E)
        if closed.alpha is not None and closed.E is not None
        else closed.eta,
        "C": closed.C,
        "noise_floor": None if closed.eta is None else closed.eta * closed.D * closed.N / closed.mu,
        "final": {"bound": closed.final, "recursion": recursion.final},
        "curve": {
            "t": [int(i) for i in closed.t[idx]],
            "bound": [float(v) for v in closed.bound[idx]],
            "recursion": [float(v) for v in recursion.bound[idx]],
        },
        "measured": None if meas is None else _measured_summary(meas, closed, recursion),
        "plot": None,
    }
    if plot is not None:
        report["plot"] = str(_plot_sgd_bound(closed, recursion, Path(plot), meas))
    return report


def _plot_sgd_bound(
    closed: BoundCurve, recursion: BoundCurve, path: Path, measured: np.ndarray | None = None
) -> Path:
    """Draw the closed form, the recursion and optionally a measured curve, log-log, to ``path``.

    The x axis is ``t + 1`` so that the start ``t = 0`` has a place on a log scale.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"Invalid plot: {path} (folder {path.parent} does not exist)")
    if path.is_dir():
        raise ConfigError(f"Invalid plot: {path} is a folder (give a file name)")
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)  # render without pyplot: no global state, no display backend
    ax = fig.add_subplot()
    label = "C/(t+E)" if closed.kind == "diminishing" else "(1-μη)^t y0 + ηDN/μ"
    ax.loglog(closed.t + 1, closed.bound, color="C0", lw=2, label=f"closed form {label}")
    ax.loglog(recursion.t + 1, recursion.bound, color="C1", ls="--", lw=2,
              label="recursion y ← (1-μη)y + η²DN")
    if measured is not None:
        ax.loglog(np.arange(measured.size) + 1, measured, color="C2", lw=1,
                  label="measured E‖w_t - w*‖²")
    step = (f"α={closed.alpha:g}, E={closed.E:g}" if closed.eta is None
            else f"η={closed.eta:g}")
    ax.set_title(f"SGD bound: μ={closed.mu:g}, L={closed.L:g}, N={closed.N:g}, "
                 f"D={closed.D}, {step}", fontsize=10)
    ax.set_xlabel("t + 1")
    ax.set_ylabel("E‖w_t - w*‖²")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    fig.savefig(path, dpi=120)
    return path


def _curves(
    mu: float,
    L: float,
    N: float,
    w0_dist2: float,
    steps: int,
    schedule: str,
    alpha: float,
    E: float | None,
    eta: float | None,
    D: int,
) -> tuple[BoundCurve, BoundCurve]:
    if schedule == "diminishing":
        if eta is not None:
            raise ConfigError(
                f"Invalid eta with schedule='diminishing': {eta} (the steps are alpha/(mu*(t+E)); "
                "pass alpha and E, or use schedule='constant')"
            )
        return (diminishing_bound(mu, L, N, w0_dist2, steps, alpha=alpha, E=E, D=D),
                diminishing_recursion(mu, L, N, w0_dist2, steps, alpha=alpha, E=E, D=D))
    if E is not None:
        raise ConfigError(
            f"Invalid E with schedule='constant': {E} (E shifts the diminishing step only)"
        )
    step = max_constant_step(L, D) if eta is None else eta
    return (constant_bound(mu, L, N, w0_dist2, steps, eta=step, D=D),
            constant_recursion(mu, L, N, w0_dist2, steps, eta=step, D=D))


def _check_measured(measured: np.ndarray, steps: int) -> np.ndarray:
    meas = np.asarray(measured, dtype=np.float64)
    if meas.ndim != 1 or meas.size == 0 or meas.size > steps + 1:
        raise ConfigError(
            f"Invalid measured: need 1 to {steps + 1} values of E‖w_t - w*‖², got shape "
            f"{meas.shape}"
        )
    if not np.all(np.isfinite(meas)) or np.any(meas < 0):
        raise ConfigError("Invalid measured: values must be finite and >= 0")
    return meas


def _measured_summary(
    meas: np.ndarray, closed: BoundCurve, recursion: BoundCurve
) -> dict[str, Any]:
    n = meas.size
    out: dict[str, Any] = {"points": int(n), "final": float(meas[-1])}
    for name, curve in (("bound", closed), ("recursion", recursion)):
        b = curve.bound[:n]
        positive = b > 0
        # Where a bound is exactly 0 (no noise, started at w*) a ratio has no meaning; a
        # measured value above it still counts as a violation below.
        ratio = float(np.max(meas[positive] / b[positive])) if positive.any() else None
        out[f"max_ratio_to_{name}"] = ratio
        out[f"within_{name}"] = bool(np.all(meas <= b))
    return out


def _log_indices(steps: int, points: int) -> np.ndarray:
    """At most ``points`` indices in ``0..steps``, log-spaced in ``t + 1``, both ends kept."""
    idx = np.unique(np.rint(np.geomspace(1, steps + 1, num=points)).astype(np.int64) - 1)
    return np.union1d(idx, [0, steps])


__all__ = ["SCHEDULES", "sgd_bound_report"]
