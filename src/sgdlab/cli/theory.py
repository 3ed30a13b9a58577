"""``sgdlab theory sgd-bound | biased-sgd | schedule``: the bounds, as tables or JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer

from sgdlab.cli import options
from sgdlab.cli.options import emit_json
from sgdlab.run.config import option

# The knobs of each command, a dataclass a command (theory/ imports nothing of ours but errors,
# so they live here): a field's option() metadata is its command-line option.


@dataclass(kw_only=True)
class SgdBoundConfig:
    """``sgdlab theory sgd-bound``: :func:`~sgdlab.cli.theory_sgd.sgd_bound_report`."""

    mu: float = field(metadata=option("Strong convexity of F.", "--mu"))
    L: float = field(metadata=option("Smoothness of every component f(.; xi).", "--L"))
    N: float = field(metadata=option("N = 2 E||grad f(w*; xi)||^2.", "--N"))
    w0_dist2: float = field(metadata=option("||w_0 - w*||^2.", "--w0-dist2"))
    steps: int = field(metadata=option("Steps to bound."))
    schedule: str = field(default="diminishing", metadata=option("diminishing or constant."))
    alpha: float = field(default=2.0, metadata=option("alpha > 1 (diminishing)."))
    E: float | None = field(default=None, metadata=option("Shift E >= 2 alpha L D / mu.", "--E"))
    eta: float | None = field(default=None, metadata=option("Constant step <= 1/(2 L D)."))
    D: int = field(default=1, metadata=option("Largest support (sparse updates).", "--D"))
    plot: Path | None = field(default=None,
                              metadata=option("Write the bound curves to this PNG."))


@dataclass(kw_only=True)
class BiasedSettingConfig:
    """What ``biased-sgd`` and ``schedule`` share: the setting of the biased-SGD analysis."""

    case: str = field(metadata=option("smooth, smooth-convex or bounded."))
    L: float = field(metadata=option("Smoothness of each f_i.", "--L"))
    m: float = field(metadata=option("Strong convexity of f.", "--m"))
    delta: float = field(default=0.0, metadata=option("Relative gradient error."))
    c: float = field(default=0.0, metadata=option("Absolute gradient error.", "--c"))
    sigma2: float = field(default=0.0, metadata=option("E||grad f_i(x*)||^2."))
    beta: float | None = field(default=None,
                               metadata=option("bounded: E||g||^2 <= beta^2 ..."))
    K: float | None = field(default=None, metadata=option("bounded: ... + K.", "--K"))
    solver: str = field(default="clarabel", metadata=option("clarabel or scs."))


@dataclass(kw_only=True)
class BiasedSgdConfig(BiasedSettingConfig):
    """``sgdlab theory biased-sgd``: :func:`~sgdlab.cli.theory_biased.biased_sgd_report`."""

    alpha: float = field(metadata=option("Step size."))
    U: float | None = field(default=None,
                            metadata=option("Minimise rho2*U + H at this U.", "--U"))


@dataclass(kw_only=True)
class ScheduleConfig(BiasedSettingConfig):
    """``sgdlab theory schedule``: :func:`~sgdlab.cli.theory_biased.schedule_report`."""

    U0: float = field(metadata=option("Bound on ||x_0 - x*||^2.", "--U0"))
    steps: int = field(metadata=option("Steps to schedule."))
    plot: Path | None = field(default=None,
                              metadata=option("Write the trade-off and schedule PNG."))


app = typer.Typer(
    help="Convergence bounds: closed forms, recursions and LMIs.", no_args_is_help=True
)


def _theory_sgd_bound(cfg: SgdBoundConfig, json_: bool) -> None:
    """Bound E||w_t - w*||^2 for SGD without bounded gradients (Nguyen et al., ICML 2018)."""
    from sgdlab.cli.theory_sgd import sgd_bound_report

    rep = sgd_bound_report(**asdict(cfg))
    if json_:
        emit_json(rep)
        return
    from sgdlab.report.tables import print_mapping

    print_mapping(
        f"SGD bound ({cfg.schedule} step)",
        {k: v for k, v in rep.items() if not isinstance(v, dict | list)}
        | {"final bound": rep["final"]["bound"], "final recursion": rep["final"]["recursion"]},
    )


def _theory_biased_sgd(cfg: BiasedSgdConfig, json_: bool) -> None:
    """One-step bound E||x+ - x*||^2 <= rho2 E||x - x*||^2 + H for biased SGD (an LMI)."""
    from sgdlab.cli.theory_biased import biased_sgd_report

    rep = biased_sgd_report(**asdict(cfg))
    if json_:
        emit_json(rep)
        return
    from sgdlab.report.tables import print_mapping

    closed = rep.get("closed_form") or {}
    print_mapping(
        f"biased SGD, {cfg.case}, alpha={cfg.alpha}",
        {
            "rho2": rep["rho2"],
            "H": rep["H"],
            "solver": rep["solver"],
            "status": rep["status"],
            "closed-form rho2": closed.get("rho2"),
            "closed-form H": closed.get("H"),
            "contracts": rep["contracts"],
            "floor": rep["floor"],
            "delta threshold": rep["delta_threshold"],
        },
    )


def _theory_schedule(cfg: ScheduleConfig, json_: bool) -> None:
    """Step sizes by sequential minimisation: U_{k+1} = min over alpha of rho2 U_k + H."""
    from sgdlab.cli.theory_biased import schedule_report

    rep = schedule_report(**asdict(cfg))
    if json_:
        emit_json(rep)
        return
    from sgdlab.report.tables import print_mapping

    print_mapping(
        f"sequential schedule, {cfg.case}",
        {
            "steps": cfg.steps,
            "method": rep["method"],
            "final bound": rep["final_bound"],
            "floor": rep["floor"],
            "first alpha": rep["alphas"][0] if rep["alphas"] else None,
            "last alpha": rep["alphas"][-1] if rep["alphas"] else None,
            "seconds": rep["seconds"],
            "plot": rep["plot"],
        },
    )


options.config_command(app, "sgd-bound", SgdBoundConfig, _theory_sgd_bound)
# The required options first, as they were written before the two commands shared a setting.
options.config_command(app, "biased-sgd", BiasedSgdConfig, _theory_biased_sgd, "case", "L", "m",
                       "alpha", "delta", "c", "sigma2", "beta", "K", "U", "solver")
options.config_command(app, "schedule", ScheduleConfig, _theory_schedule, "case", "L", "m", "U0",
                       "steps", "delta", "c", "sigma2", "beta", "K", "solver", "plot")
