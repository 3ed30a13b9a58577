"""``sgdlab theory sgd-bound | biased-sgd | schedule``: the bounds, as tables or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sgdlab.cli.options import JsonOption, emit_json

# The options biased-sgd and schedule share.
_Case = Annotated[str, typer.Option(help="smooth, smooth-convex or bounded.")]
_L = Annotated[float, typer.Option("--L", help="Smoothness of each f_i.")]
_M = Annotated[float, typer.Option("--m", help="Strong convexity of f.")]
_Delta = Annotated[float, typer.Option(help="Relative gradient error.")]
_C = Annotated[float, typer.Option("--c", help="Absolute gradient error.")]
_Sigma2 = Annotated[float, typer.Option(help="E||grad f_i(x*)||^2.")]
_Beta = Annotated[float | None, typer.Option(help="bounded: E||g||^2 <= beta^2 ...")]
_K = Annotated[float | None, typer.Option("--K", help="bounded: ... + K.")]
_Solver = Annotated[str, typer.Option(help="clarabel or scs.")]


app = typer.Typer(
    help="Convergence bounds: closed forms, recursions and LMIs.", no_args_is_help=True
)


def _theory_sgd_bound(
    mu: Annotated[float, typer.Option("--mu", help="Strong convexity of F.")],
    L: Annotated[float, typer.Option("--L", help="Smoothness of every component f(.; xi).")],
    N: Annotated[float, typer.Option("--N", help="N = 2 E||grad f(w*; xi)||^2.")],
    w0_dist2: Annotated[float, typer.Option("--w0-dist2", help="||w_0 - w*||^2.")],
    steps: Annotated[int, typer.Option(help="Steps to bound.")],
    schedule: Annotated[str, typer.Option(help="diminishing or constant.")] = "diminishing",
    alpha: Annotated[float, typer.Option(help="alpha > 1 (diminishing).")] = 2.0,
    E: Annotated[float | None, typer.Option("--E", help="Shift E >= 2 alpha L D / mu.")] = None,
    eta: Annotated[float | None, typer.Option(help="Constant step <= 1/(2 L D).")] = None,
    D: Annotated[int, typer.Option("--D", help="Largest support (sparse updates).")] = 1,
    plot: Annotated[Path | None, typer.Option(help="Write the bound curves to this PNG.")] = None,
    json_: JsonOption = False,
) -> None:
    """Bound E||w_t - w*||^2 for SGD without bounded gradients (Nguyen et al., ICML 2018)."""
    from sgdlab.cli.theory_sgd import sgd_bound_report

    rep = sgd_bound_report(
        mu=mu,
        L=L,
        N=N,
        w0_dist2=w0_dist2,
        steps=steps,
        schedule=schedule,
        alpha=alpha,
        E=E,
        eta=eta,
        D=D,
        plot=plot,
    )
    if json_:
        emit_json(rep)
        return
    from sgdlab.report.tables import print_mapping

    print_mapping(
        f"SGD bound ({schedule} step)",
        {k: v for k, v in rep.items() if not isinstance(v, dict | list)}
        | {"final bound": rep["final"]["bound"], "final recursion": rep["final"]["recursion"]},
    )


def _theory_biased_sgd(
    case: _Case,
    L: _L,
    m: _M,
    alpha: Annotated[float, typer.Option(help="Step size.")],
    delta: _Delta = 0.0,
    c: _C = 0.0,
    sigma2: _Sigma2 = 0.0,
    beta: _Beta = None,
    K: _K = None,
    U: Annotated[float | None, typer.Option("--U", help="Minimise rho2*U + H at this U.")] = None,
    solver: _Solver = "clarabel",
    json_: JsonOption = False,
) -> None:
    """One-step bound E||x+ - x*||^2 <= rho2 E||x - x*||^2 + H for biased SGD (an LMI)."""
    from sgdlab.cli.theory_biased import biased_sgd_report

    rep = biased_sgd_report(
        case,
        L=L,
        m=m,
        alpha=alpha,
        delta=delta,
        c=c,
        sigma2=sigma2,
        beta=beta,
        K=K,
        solver=solver,
        U=U,
    )
    if json_:
        emit_json(rep)
        return
    from sgdlab.report.tables import print_mapping

    closed = rep.get("closed_form") or {}
    print_mapping(
        f"biased SGD, {case}, alpha={alpha}",
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


def _theory_schedule(
    case: _Case,
    L: _L,
    m: _M,
    U0: Annotated[float, typer.Option("--U0", help="Bound on ||x_0 - x*||^2.")],
    steps: Annotated[int, typer.Option(help="Steps to schedule.")],
    delta: _Delta = 0.0,
    c: _C = 0.0,
    sigma2: _Sigma2 = 0.0,
    beta: _Beta = None,
    K: _K = None,
    solver: _Solver = "clarabel",
    plot: Annotated[Path | None, typer.Option(help="Write the trade-off and schedule PNG.")] = None,
    json_: JsonOption = False,
) -> None:
    """Step sizes by sequential minimisation: U_{k+1} = min over alpha of rho2 U_k + H."""
    from sgdlab.cli.theory_biased import schedule_report

    rep = schedule_report(
        case, L, m, delta, c, sigma2, U0=U0, steps=steps, plot=plot, beta=beta, K=K, solver=solver
    )
    if json_:
        emit_json(rep)
        return
    from sgdlab.report.tables import print_mapping

    print_mapping(
        f"sequential schedule, {case}",
        {
            "steps": steps,
            "method": rep["method"],
            "final bound": rep["final_bound"],
            "floor": rep["floor"],
            "first alpha": rep["alphas"][0] if rep["alphas"] else None,
            "last alpha": rep["alphas"][-1] if rep["alphas"] else None,
            "seconds": rep["seconds"],
            "plot": rep["plot"],
        },
    )


app.command("sgd-bound")(_theory_sgd_bound)
app.command("biased-sgd")(_theory_biased_sgd)
app.command("schedule")(_theory_schedule)
