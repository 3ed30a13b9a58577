"""``sgdlab bench quick | overlap | smallbatch | mlbfgs | hogwild | biased-sgd``: the suite and
each method's evidence (:mod:`sgdlab.experiments`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from sgdlab.cli import options
from sgdlab.cli.options import DbOption, emit_json
from sgdlab.experiments.configs import (
    BiasedSgdBenchConfig,
    HogwildBenchConfig,
    OverlapBenchConfig,
    QuickBenchConfig,
)
from sgdlab.experiments.mlbfgs_plan import MlbfgsBenchConfig
from sgdlab.experiments.smallbatch_plan import SmallBatchPlan, with_protocol_defaults
from sgdlab.run.store import DEFAULT_DB

app = typer.Typer(help="Benchmark suites: train, score, plot and report.", no_args_is_help=True)


def _bench_quick(cfg: QuickBenchConfig, json_: bool) -> None:
    """A few minutes: each workload family with SGD, momentum, Adam; table, plots, report."""
    from sgdlab.experiments.suites import run_suite

    summary = run_suite("quick", db=cfg.db, out=cfg.out, quiet=json_)
    if json_:
        emit_json(summary)


def _bench_overlap(cfg: OverlapBenchConfig, json_: bool) -> None:
    """Overlap Local-SGD against sync, Local SGD, EASGD and CoCoD-SGD under injected delay."""
    if cfg.protocol:
        summary = _overlap_protocol(cfg.protocol, cfg.out, json_, cfg.seeds or None)
    else:
        from sgdlab.experiments.overlap import overlap_benchmark

        summary = overlap_benchmark(cfg.out, grid=cfg.grid, quiet=json_)
    if json_:
        emit_json(summary)


def _overlap_protocol(protocol: str, out: Path, quiet: bool,
                      seeds: tuple[int, ...] | None) -> dict[str, Any]:
    """``--protocol``: the runs of :mod:`sgdlab.experiments.overlap_paper` on a testbed of one
    host per rank, brought up at each τ's rate (and for each probe) and down after it."""
    import contextlib
    from collections.abc import Iterator

    from sgdlab.errors import ConfigError
    from sgdlab.experiments.overlap_paper import PROTOCOLS, run_protocol
    from sgdlab.testbed import Testbed
    from sgdlab.testbed.netns import require_root_and_iproute2

    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    require_root_and_iproute2()
    hosts = PROTOCOLS[protocol].world_size

    @contextlib.contextmanager
    def link(rate_bps: float, burst: int) -> Iterator[dict[str, Any]]:
        with Testbed.up(hosts, int(rate_bps), name="paper", burst=burst) as tb:
            yield tb.launch_options(hosts)

    return run_protocol(protocol, link, out, log=(lambda _: None) if quiet else print,
                        seeds=seeds)


def _bench_smallbatch(*, ctx: typer.Context, db: Path, out: Path, json_: bool,
                      **values: Any) -> None:
    from sgdlab.experiments.smallbatch import run_smallbatch

    plan = SmallBatchPlan(**options.config_values(SmallBatchPlan, values))
    sources = {f.name: ctx.get_parameter_source(f.metadata.get("name") or f.name)
               for f in dataclasses.fields(SmallBatchPlan)}
    given = {name for name, source in sources.items()
             if source is not None and source.name != "DEFAULT"}  # typed on the command line
    summary = run_smallbatch(with_protocol_defaults(plan, given), db=db, out=out, quiet=json_)
    if json_:
        emit_json(summary)


def _register_smallbatch() -> None:
    options.command(
        app, "smallbatch",
        "Prox-SGD/prox-Adam against SGD/Adam at small batches, tuned on an equal budget.", [
            *options.from_config(SmallBatchPlan, "workloads", "batch_sizes", "subset",
                                 "validation", "test", "epochs", "seeds", "lams",
                                 "ablate_batch_sizes", "protocol"),
            options.param("ctx", typer.Context),
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


def _bench_hogwild(cfg: HogwildBenchConfig, json_: bool) -> None:
    """Hogwild! evidence: 1/2/4 workers vs the bound, and vs PyTorch's mnist_hogwild pattern."""
    from sgdlab.experiments.hogwild import hogwild_bench, print_hogwild_table

    rep = hogwild_bench(cfg.out, seeds=cfg.seeds, progress=None if json_ else print)
    if json_:
        emit_json({k: v for k, v in rep.items() if k != "workloads"})
        return
    print_hogwild_table(rep)


def _bench_biased_sgd(cfg: BiasedSgdBenchConfig, json_: bool) -> None:
    """Biased SGD (relative + absolute error) run for real, under the bound of the LMI."""
    from sgdlab.experiments import biased_practice as practice

    if cfg.workload == "quadratic":
        problem = practice.quadratic_problem(lam=0.05 if cfg.l2 is None else cfg.l2)
    else:
        from sgdlab.workloads import get_workload

        wl_options: dict[str, Any] = {} if cfg.l2 is None else {"l2": cfg.l2}
        wl = get_workload(cfg.workload, **wl_options)
        problem = practice.logistic_problem(wl, rows=cfg.rows)
    rep = practice.practice_report(problem, cfg.case, delta=cfg.delta, c=cfg.c, steps=cfg.steps,
                                   seeds=cfg.seeds, alpha=cfg.alpha, plot=cfg.plot)
    if json_:
        emit_json(rep)
        return
    from sgdlab.report.tables import print_mapping

    print_mapping(f"biased SGD on {rep['problem']}, case {cfg.case}", {
        k: v for k, v in rep.items() if k != "rows"
    })
    for row in rep["rows"]:
        print_mapping(f"{row['plan']} steps, {row['direction']} error", row)


options.config_command(app, "quick", QuickBenchConfig, _bench_quick)
options.config_command(app, "overlap", OverlapBenchConfig, _bench_overlap)
_register_smallbatch()
_register_mlbfgs()
options.config_command(app, "hogwild", HogwildBenchConfig, _bench_hogwild)
options.config_command(app, "biased-sgd", BiasedSgdBenchConfig, _bench_biased_sgd)
