"""``sgdlab bench quick | overlap | smallbatch | mlbfgs | hogwild | biased-sgd``: the suite and
each method's evidence (:mod:`sgdlab.experiments`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sgdlab.cli import options
from sgdlab.cli.options import DbOption, JsonOption, emit_json
from sgdlab.experiments.mlbfgs_plan import MlbfgsBenchConfig
from sgdlab.experiments.smallbatch_plan import SmallBatchPlan
from sgdlab.run.store import DEFAULT_DB

app = typer.Typer(help="Benchmark suites: train, score, plot and report.", no_args_is_help=True)


def _bench_quick(
    db: DbOption = DEFAULT_DB,
    out: Annotated[Path, typer.Option(help="Folder for the plots and the HTML report.")] = Path(
        "sgdlab-results/quick"
    ),
    json_: JsonOption = False,
) -> None:
    """A few minutes: each workload family with SGD, momentum, Adam; table, plots, report."""
    from sgdlab.experiments.suites import run_suite

    summary = run_suite("quick", db=db, out=out, quiet=json_)
    if json_:
        emit_json(summary)


def _bench_overlap(
    out: Annotated[Path, typer.Option(help="Folder for the figures and the table.")] = Path(
        "sgdlab-results/overlap"
    ),
    grid: Annotated[str, typer.Option(help="small (about 10 minutes here) or full.")] = "small",
    json_: JsonOption = False,
) -> None:
    """Overlap Local-SGD against sync, Local SGD, EASGD and CoCoD-SGD under injected delay."""
    from sgdlab.experiments.overlap import overlap_benchmark

    summary = overlap_benchmark(out, grid=grid, quiet=json_)
    if json_:
        emit_json(summary)


def _bench_smallbatch(*, db: Path, out: Path, json_: bool, **values: Any) -> None:
    from sgdlab.experiments.smallbatch import run_smallbatch

    plan = SmallBatchPlan(**options.config_values(SmallBatchPlan, values))
    summary = run_smallbatch(plan, db=db, out=out, quiet=json_)
    if json_:
        emit_json(summary)


def _register_smallbatch() -> None:
    options.command(
        app, "smallbatch",
        "Prox-SGD/prox-Adam against SGD/Adam at small batches, tuned on an equal budget.", [
            *options.from_config(SmallBatchPlan, "workloads", "batch_sizes", "subset",
                                 "validation", "epochs", "seeds", "lams", "ablate_batch_sizes"),
            options.param("db", DbOption, DEFAULT_DB),
            options.param("out", Annotated[Path, typer.Option(
                help="Folder for the table, plots and records.")],
                Path("sgdlab-results/smallbatch")),
            options.json_option(),
        ], _bench_smallbatch)


def _bench_mlbfgs(*, json_: bool, **values: Any) -> None:
    from sgdlab.experiments.mlbfgs import run_mlbfgs_bench

    cfg = MlbfgsBenchConfig(**options.config_values(MlbfgsBenchConfig, values))
    summary = run_mlbfgs_bench(cfg, quiet=json_)
    if json_:
        emit_json(summary)


def _register_mlbfgs() -> None:
    options.command(
        app, "mlbfgs",
        "mL-BFGS vs SGD-momentum, Adam, AdamW, L-BFGS, SOAP: tuned, 3 seeds, goals checked.", [
            *options.from_config(MlbfgsBenchConfig, "workloads", "contenders", "seeds",
                                 "batch_size", "steps_scale", "cost_rounds", "db", "out"),
            options.json_option(),
        ], _bench_mlbfgs)


def _bench_hogwild(
    out: Annotated[Path, typer.Option(help="Folder for the plots and hogwild.json.")] = Path(
        "sgdlab-results/hogwild"
    ),
    seeds: Annotated[int, typer.Option(help="Seeds per variant.")] = 3,
    json_: JsonOption = False,
) -> None:
    """Hogwild! evidence: 1/2/4 workers vs the bound, and vs PyTorch's mnist_hogwild pattern."""
    from sgdlab.experiments.hogwild import hogwild_bench, print_hogwild_table

    rep = hogwild_bench(out, seeds=seeds, progress=None if json_ else print)
    if json_:
        emit_json({k: v for k, v in rep.items() if k != "workloads"})
        return
    print_hogwild_table(rep)


def _bench_biased_sgd(
    workload: Annotated[
        str, typer.Option(help="A dense logreg-* workload, or 'quadratic' (synthetic).")
    ] = "logreg-breast-cancer",
    l2: Annotated[float | None, typer.Option(help="lambda of the workload (its default).")] = None,
    rows: Annotated[int | None, typer.Option(help="A seeded subset of the training rows.")] = None,
    case: Annotated[str, typer.Option(help="smooth or smooth-convex.")] = "smooth-convex",
    delta: Annotated[float, typer.Option(help="Relative gradient error.")] = 0.0,
    c: Annotated[
        float | None, typer.Option("--c", help="Absolute error (default: floor = ||x*||^2/10).")
    ] = None,
    steps: Annotated[int, typer.Option(help="SGD steps.")] = 4000,
    seeds: Annotated[int, typer.Option(help="Independent runs per variant.")] = 8,
    alpha: Annotated[
        float | None, typer.Option(help="Constant step (default: the schedule's first).")
    ] = None,
    plot: Annotated[Path, typer.Option(help="Write the figure here.")] = Path(
        "sgdlab-results/biased-sgd/biased-practice.png"
    ),
    json_: JsonOption = False,
) -> None:
    """Biased SGD (relative + absolute error) run for real, under the bound of the LMI."""
    from sgdlab.experiments import biased_practice as practice

    if workload == "quadratic":
        problem = practice.quadratic_problem(lam=0.05 if l2 is None else l2)
    else:
        from sgdlab.workloads import get_workload

        options: dict[str, Any] = {} if l2 is None else {"l2": l2}
        wl = get_workload(workload, **options)
        problem = practice.logistic_problem(wl, rows=rows)
    rep = practice.practice_report(problem, case, delta=delta, c=c, steps=steps, seeds=seeds,
                          alpha=alpha, plot=plot)
    if json_:
        emit_json(rep)
        return
    from sgdlab.report.tables import print_mapping

    print_mapping(f"biased SGD on {rep['problem']}, case {case}", {
        k: v for k, v in rep.items() if k != "rows"
    })
    for row in rep["rows"]:
        print_mapping(f"{row['plan']} steps, {row['direction']} error", row)


app.command("quick")(_bench_quick)
app.command("overlap")(_bench_overlap)
_register_smallbatch()
_register_mlbfgs()
app.command("hogwild")(_bench_hogwild)
app.command("biased-sgd")(_bench_biased_sgd)
