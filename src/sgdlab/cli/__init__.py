"""The ``sgdlab`` command; the only place argv is parsed.

Every command takes ``--help``. ``--json`` prints one JSON object as the last line of stdout.
Bad input prints one line ``error: …`` on stderr and exits with status 2, leaving existing
results untouched.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.exceptions import Abort, Exit, TyperException

from sgdlab.errors import SgdlabError

app = typer.Typer(
    name="sgdlab",
    help="Train with stochastic gradients, benchmark optimizers, and check convergence bounds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(
    help="Benchmark suites: train, score, plot and report.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
theory_app = typer.Typer(
    help="Convergence bounds: closed forms, recursions and LMIs.", no_args_is_help=True
)
app.add_typer(theory_app, name="theory")

DbOption = Annotated[Path, typer.Option("--db", help="Results database (SQLite).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]


def _emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


def _parse_sets(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``key=value`` → optimizer hyperparameters; ``workload.key=value`` → workload options."""
    opt: dict[str, Any] = {}
    wl: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"--set takes key=value, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, list):
            value = tuple(value)
        if key.startswith("workload."):
            wl[key.removeprefix("workload.")] = raw
        else:
            opt[key] = value
    return opt, wl


@app.command()
def train(
    workload: Annotated[str, typer.Option(help="Workload name (see `sgdlab list`).")],
    optimizer: Annotated[str, typer.Option(help="Optimizer name (see `sgdlab list`).")] = "sgd",
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 0.1,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Samples per step.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the model, the batches and the RNG.")] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value: optimizer hyperparameter; workload.key=value."),
    ] = None,
    schedule: Annotated[
        str, typer.Option(help="constant, or diminishing: lr = alpha/(mu(t+E)).")
    ] = "constant",
    mu: Annotated[float | None, typer.Option("--mu", help="Strong convexity (diminishing).")] = (
        None
    ),
    L: Annotated[float | None, typer.Option("--L", help="Smoothness (diminishing).")] = None,
    alpha: Annotated[float, typer.Option(help="alpha > 1 of the diminishing schedule.")] = 2.0,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps (0: ten times).")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0: never).")] = (
        0
    ),
    resume: Annotated[bool, typer.Option(help="Continue the newest unfinished run in --out.")] = (
        False
    ),
    out: Annotated[Path | None, typer.Option(help="Folder for logs and checkpoints.")] = None,
    db: DbOption = Path("sgdlab-results/results.db"),
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    threads: Annotated[int, typer.Option(help="torch threads (0: torch's default).")] = 0,
    on_nonfinite: Annotated[
        str,
        typer.Option(
            help="stop: a NaN or Inf loss or gradient ends the run; skip: that step is undone "
            "and counted (too many in a row end the run)."
        ),
    ] = "stop",
    json_: JsonOption = False,
) -> None:
    """Train one workload with one optimizer and record the run."""
    from sgdlab.run.config import TrainConfig
    from sgdlab.run.train import train as run_train

    opt_options, wl_options = _parse_sets(set_ or [])
    config = TrainConfig(
        workload=workload,
        optimizer=optimizer,
        lr=lr,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        optimizer_options=opt_options,
        workload_options=wl_options,
        schedule=schedule,
        mu=mu,
        L=L,
        alpha=alpha,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        out=out,
        resume=resume,
        db=db,
        device=device,
        threads=threads,
        progress=None if not json_ else False,
        on_nonfinite=on_nonfinite,
    )
    result = run_train(config)
    if json_:
        _emit_json(result.to_json())
    else:
        from sgdlab.report.tables import print_result

        print_result(result)
        if result.skipped_steps:
            sys.stdout.write(
                f"{result.skipped_steps} steps skipped for a NaN or Inf (--on-nonfinite skip); "
                f"'skip' events in {Path(result.out_dir) / 'events.jsonl'}\n"
            )


@app.command("list")
def list_(json_: JsonOption = False) -> None:
    """List the workloads and optimizers."""
    from sgdlab.cli.catalogue import catalogue, print_catalogue

    cat = catalogue()
    if json_:
        _emit_json(cat)
    else:
        print_catalogue(cat)


@bench_app.command("quick")
def bench_quick(
    db: DbOption = Path("sgdlab-results/results.db"),
    out: Annotated[Path, typer.Option(help="Folder for the plots and the HTML report.")] = Path(
        "sgdlab-results/quick"
    ),
    json_: JsonOption = False,
) -> None:
    """A few minutes: each workload family with SGD, momentum, Adam; table, plots, report."""
    from sgdlab.experiments.suites import run_suite

    summary = run_suite("quick", db=db, out=out, quiet=json_)
    if json_:
        _emit_json(summary)


@app.command()
def report(
    db: DbOption = Path("sgdlab-results/results.db"),
    out: Annotated[Path, typer.Option(help="Folder for the plots and the HTML report.")] = Path(
        "sgdlab-results/report"
    ),
    suite: Annotated[str | None, typer.Option(help="Only runs of this suite.")] = None,
    json_: JsonOption = False,
) -> None:
    """Tabulate, plot and write an HTML report of the runs in a results database."""
    from sgdlab.report.html import build_report
    from sgdlab.run.store import ResultStore

    with ResultStore(db, create=False) as store:
        summary = build_report(store, out, suite=suite, title=f"sgdlab report: {db}", quiet=json_)
    if json_:
        _emit_json(summary)


# --- theory ----------------------------------------------------------------------------------


@theory_app.command("sgd-bound")
def theory_sgd_bound(
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
        _emit_json(rep)
        return
    from sgdlab.report.tables import print_mapping

    print_mapping(
        f"SGD bound ({schedule} step)",
        {k: v for k, v in rep.items() if not isinstance(v, dict | list)}
        | {"final bound": rep["final"]["bound"], "final recursion": rep["final"]["recursion"]},
    )


@theory_app.command("biased-sgd")
def theory_biased_sgd(
    case: Annotated[str, typer.Option(help="smooth, smooth-convex or bounded.")],
    L: Annotated[float, typer.Option("--L", help="Smoothness of each f_i.")],
    m: Annotated[float, typer.Option("--m", help="Strong convexity of f.")],
    alpha: Annotated[float, typer.Option(help="Step size.")],
    delta: Annotated[float, typer.Option(help="Relative gradient error.")] = 0.0,
    c: Annotated[float, typer.Option("--c", help="Absolute gradient error.")] = 0.0,
    sigma2: Annotated[float, typer.Option(help="E||grad f_i(x*)||^2.")] = 0.0,
    beta: Annotated[float | None, typer.Option(help="bounded: E||g||^2 <= beta^2 ...")] = None,
    K: Annotated[float | None, typer.Option("--K", help="bounded: ... + K.")] = None,
    U: Annotated[float | None, typer.Option("--U", help="Minimise rho2*U + H at this U.")] = None,
    solver: Annotated[str, typer.Option(help="clarabel or scs.")] = "clarabel",
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
        _emit_json(rep)
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


@theory_app.command("schedule")
def theory_schedule(
    case: Annotated[str, typer.Option(help="smooth, smooth-convex or bounded.")],
    L: Annotated[float, typer.Option("--L", help="Smoothness of each f_i.")],
    m: Annotated[float, typer.Option("--m", help="Strong convexity of f.")],
    U0: Annotated[float, typer.Option("--U0", help="Bound on ||x_0 - x*||^2.")],
    steps: Annotated[int, typer.Option(help="Steps to schedule.")],
    delta: Annotated[float, typer.Option(help="Relative gradient error.")] = 0.0,
    c: Annotated[float, typer.Option("--c", help="Absolute gradient error.")] = 0.0,
    sigma2: Annotated[float, typer.Option(help="E||grad f_i(x*)||^2.")] = 0.0,
    beta: Annotated[float | None, typer.Option(help="bounded: E||g||^2 <= beta^2 ...")] = None,
    K: Annotated[float | None, typer.Option("--K", help="bounded: ... + K.")] = None,
    solver: Annotated[str, typer.Option(help="clarabel or scs.")] = "clarabel",
    plot: Annotated[Path | None, typer.Option(help="Write the trade-off and schedule PNG.")] = None,
    json_: JsonOption = False,
) -> None:
    """Step sizes by sequential minimisation: U_{k+1} = min over alpha of rho2 U_k + H."""
    from sgdlab.cli.theory_biased import schedule_report

    rep = schedule_report(
        case, L, m, delta, c, sigma2, U0=U0, steps=steps, plot=plot, beta=beta, K=K, solver=solver
    )
    if json_:
        _emit_json(rep)
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


# --- testbed (slow network of namespaces; root only) ----------------------------------------

testbed_app = typer.Typer(
    help="A slow network on this machine: namespaces, veth, tc tbf (root).", no_args_is_help=True
)
app.add_typer(testbed_app, name="testbed")
TestbedName = Annotated[str, typer.Option("--name", help="Testbed name (namespaces sgdl-NAME-*).")]
StateDir = Annotated[Path, typer.Option("--state-dir", help="Folder of the state file.")]


@testbed_app.command("up")
def testbed_up(
    hosts: Annotated[int, typer.Option("--hosts", help="Number of hosts (namespaces).")],
    rate: Annotated[str, typer.Option(help="Link rate, tc bit units: 200mbit, 1gbit; none.")] = (
        "200mbit"
    ),
    burst: Annotated[
        int | None, typer.Option(help="tbf bucket, bytes (default: 1 ms, >= 32 KiB).")
    ] = None,
    latency_ms: Annotated[float, typer.Option(help="tbf queue bound, ms.")] = 25.0,
    egress_only: Annotated[bool, typer.Option(help="Shape only what hosts send.")] = False,
    delay_ms: Annotated[float, typer.Option(help="One-way delay, ms (needs netem).")] = 0.0,
    name: TestbedName = "tb",
    state_dir: StateDir = Path("/run"),
    json_: JsonOption = False,
) -> None:
    """Build K hosts on one bridge, every link rate-limited; stays up until `testbed down`."""
    from sgdlab.testbed import probe as tbc

    status = tbc.up_testbed(
        hosts,
        rate,
        name=name,
        burst=burst,
        latency_ms=latency_ms,
        limit_ingress=not egress_only,
        delay_ms=delay_ms,
        state_dir=state_dir,
    )
    if json_:
        _emit_json(status)
    else:
        tbc.print_status(status)


@testbed_app.command("down")
def testbed_down(
    name: TestbedName = "tb", state_dir: StateDir = Path("/run"), json_: JsonOption = False
) -> None:
    """Remove the testbed: its namespaces (and the processes inside) and its state file."""
    from sgdlab.testbed import probe as tbc

    result = tbc.down_testbed(name, state_dir=state_dir)
    if json_:
        _emit_json(result)
    else:
        sys.stdout.write(
            f"removed {len(result['removed'])} namespaces: {' '.join(result['removed']) or '-'}\n"
        )


@testbed_app.command("status")
def testbed_status(
    name: TestbedName = "tb", state_dir: StateDir = Path("/run"), json_: JsonOption = False
) -> None:
    """Hosts, addresses, link shape and each host's egress counters."""
    from sgdlab.testbed import probe as tbc

    status = tbc.status_of_testbed(name, state_dir=state_dir)
    if json_:
        _emit_json(status)
    else:
        tbc.print_status(status)


def _netns_launch_options(world_size: int) -> dict[str, Any]:
    """``launch`` keywords from the testbed module, or a one-line error if there is none."""
    from sgdlab.testbed import launch_options

    return launch_options(world_size)


def _torchrun_main(config: Any, json_: bool) -> None:
    """Train this rank; rank 0 prints the result; every rank then leaves with ``os._exit``."""
    import sys

    from sgdlab.distributed.comm import teardown_and_exit
    from sgdlab.run.dist import JSON_KEYS, result_json
    from sgdlab.run.rank import run_under_torchrun

    code = 0
    try:
        config.validate()
        result = run_under_torchrun(config)
        if result is not None:
            result["seconds_per_step"] = result["wall_seconds"] / result["steps"]
            line = result_json(result) if json_ else {k: result[k] for k in JSON_KEYS}
            import json

            sys.stdout.write(json.dumps(line, default=str) + "\n")
    except (SgdlabError, ValueError) as exc:
        sys.stderr.write(f"error: {str(exc).splitlines()[0]}\n")
        code = 2
    teardown_and_exit(code)


# --- dist (S2: Overlap Local-SGD and the distributed baselines) ------------------------------


@app.command()
def dist(
    algo: Annotated[str, typer.Option(help="sync, local, overlap, easgd or cocod.")],
    world_size: Annotated[int, typer.Option(help="Ranks to spawn on this host.")] = 2,
    workload: Annotated[str, typer.Option(help="Workload (see `sgdlab list`).")] = "cnn-fmnist",
    optimizer: Annotated[str, typer.Option(help="Inner optimizer of every rank.")] = "sgd",
    lr: Annotated[float, typer.Option(help="Learning rate of the inner optimizer.")] = 0.05,
    batch_size: Annotated[int, typer.Option(help="Samples per step, per rank.")] = 32,
    tau: Annotated[int, typer.Option(help="Local steps per communication round.")] = 2,
    alpha: Annotated[float, typer.Option(help="Pull-back or elastic weight.")] = 0.6,
    anchor_momentum: Annotated[float, typer.Option(help="Anchor momentum beta (overlap).")] = 0.0,
    steps: Annotated[int, typer.Option(help="Local steps per rank.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the model, partition and batches.")] = 0,
    partition: Annotated[str, typer.Option(help="iid or dirichlet:<alpha>.")] = "iid",
    bandwidth_mbps: Annotated[float, typer.Option(help="Injected link rate (0: none).")] = 0.0,
    link_steps: Annotated[
        float, typer.Option(help="Injected link on which an all-reduce takes N local steps.")
    ] = 0.0,
    latency_ms: Annotated[float, typer.Option(help="Injected latency per collective.")] = 0.0,
    straggler_prob: Annotated[float, typer.Option(help="Chance a step is slowed.")] = 0.0,
    straggler_slowdown: Annotated[float, typer.Option(help="How many times slower.")] = 1.0,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps (0: five times).")] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value: an inner hyperparameter, or workload.key=value."),
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(help="Checkpoint every rank every N steps (0: never).")
    ] = 0,
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Folder of the run's checkpoints, final model and result.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest checkpoint in --checkpoint-dir.")
    ] = False,
    collective_timeout: Annotated[
        float, typer.Option(help="Seconds a rank waits for a silent peer before failing.")
    ] = 60.0,
    timeout: Annotated[float, typer.Option(help="Seconds before a hung run is stopped.")] = 600.0,
    testbed: Annotated[bool, typer.Option(help="Run each rank in its testbed namespace.")] = False,
    addr: Annotated[str, typer.Option(help="Rendezvous address (a free port is picked).")] = (
        "127.0.0.1"
    ),
    json_: JsonOption = False,
) -> None:
    """Train on W local ranks (gloo) with a distributed algorithm; under torchrun, one rank.

    Across hosts: torchrun --nnodes N --nproc-per-node 1 --node-rank R --master-addr H
    --master-port P -m sgdlab.cli dist ... (rank 0 prints the result). With --max-restarts and
    --checkpoint-dir, ranks torchrun restarts continue from the newest checkpoint.
    """
    from sgdlab.run import dist as bench_dist
    from sgdlab.run.config import DistConfig

    opt_options, wl_options = _parse_sets(set_ or [])
    config = DistConfig(
        algo=algo,
        world_size=world_size,
        workload=workload,
        optimizer=optimizer,
        lr=lr,
        batch_size=batch_size,
        tau=tau,
        alpha=alpha,
        anchor_momentum=anchor_momentum,
        steps=steps,
        seed=seed,
        partition=partition,
        bandwidth_mbps=bandwidth_mbps,
        link_steps=link_steps,
        latency_ms=latency_ms,
        straggler_prob=straggler_prob,
        straggler_slowdown=straggler_slowdown,
        eval_every=eval_every,
        optimizer_options=opt_options,
        workload_options=wl_options,
        checkpoint_every=checkpoint_every,
        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir is not None else "",
        resume=resume,
        collective_timeout_s=collective_timeout,
    )
    if bench_dist.under_torchrun():
        _torchrun_main(config, json_)
        return
    options = _netns_launch_options(world_size) if testbed else {"addr": addr}
    result = bench_dist.run_dist(config, launch_options=options, timeout_s=timeout)
    if json_:
        _emit_json(bench_dist.result_json(result))
    else:
        from sgdlab.report.tables import print_mapping

        print_mapping(
            f"sgdlab dist · {algo} · W={world_size}",
            {k: result[k] for k in bench_dist.JSON_KEYS}
            | {"time_to_target": result["time_to_target"]},
        )


@bench_app.command("overlap")
def bench_overlap(
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
        _emit_json(summary)


# --- bench smallbatch (S3 evidence) ----------------------------------------------------------


@bench_app.command("smallbatch")
def bench_smallbatch(
    workloads: Annotated[str, typer.Option(help="Comma-separated workloads.")] = (
        "cnn-fmnist,mlp-mnist"
    ),
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "8,16,128",
    subset: Annotated[int, typer.Option(help="Training samples (a fixed seeded subset).")] = 2000,
    validation: Annotated[int, typer.Option(help="Held-out training samples for tuning.")] = 1000,
    epochs: Annotated[int, typer.Option(help="Epochs at every batch size.")] = 2,
    seeds: Annotated[int, typer.Option(help="Final seeds per variant (1..N).")] = 3,
    lams: Annotated[str, typer.Option(help="Extra lambdas a prox variant tries.")] = "0.01,0.1",
    ablate_batch_sizes: Annotated[
        str, typer.Option(help="Batch sizes of the lambda=0 / no-decay ablation ('' for none).")
    ] = "8",
    db: DbOption = Path("sgdlab-results/results.db"),
    out: Annotated[Path, typer.Option(help="Folder for the table, plots and records.")] = Path(
        "sgdlab-results/smallbatch"
    ),
    json_: JsonOption = False,
) -> None:
    """Prox-SGD/prox-Adam against SGD/Adam at small batches, tuned on an equal budget."""
    from sgdlab.experiments.smallbatch import run_smallbatch
    from sgdlab.experiments.smallbatch_plan import SmallBatchPlan, parse_list

    plan = SmallBatchPlan(
        workloads=parse_list(workloads, str, "workloads"),
        batch_sizes=parse_list(batch_sizes, int, "batch sizes"),
        subset=subset, validation=validation, epochs=epochs, seeds=seeds,
        lams=parse_list(lams, float, "lams"),
        ablate_batch_sizes=parse_list(ablate_batch_sizes, int, "ablation batch sizes")
        if ablate_batch_sizes.strip() else (),
    )
    summary = run_smallbatch(plan, db=db, out=out, quiet=json_)
    if json_:
        _emit_json(summary)


# --- bench mlbfgs (S5) -----------------------------------------------------------------------


@bench_app.command("mlbfgs")
def bench_mlbfgs(
    workload: Annotated[
        list[str] | None,
        typer.Option(help="Workload (repeat); default logreg-fmnist, mlp-mnist, cnn-fmnist."),
    ] = None,
    contender: Annotated[
        list[str] | None,
        typer.Option(help="Contender (repeat): mlbfgs, sgd-momentum, adam, adamw, lbfgs, "
                     "lbfgs-iter4, soap, shampoo; default all but lbfgs-iter4, shampoo."),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds at the tuned step size.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Batch (L-BFGS: 1024, same samples).")] = 128,
    steps_scale: Annotated[float, typer.Option(help="Multiply every workload's steps.")] = 1.0,
    cost_rounds: Annotated[
        int, typer.Option(help="Interleaved rounds of the step-cost measurement (0: skip).")
    ] = 7,
    db: DbOption = Path("sgdlab-results/results.db"),
    out: Annotated[Path, typer.Option(help="Folder for the plots and the report.")] = Path(
        "sgdlab-results/mlbfgs"
    ),
    json_: JsonOption = False,
) -> None:
    """mL-BFGS vs SGD-momentum, Adam, AdamW, L-BFGS, SOAP: tuned, 3 seeds, goals checked."""
    from sgdlab.experiments.mlbfgs import (
        DEFAULT_CONTENDERS,
        PLANS,
        MlbfgsBenchConfig,
        run_mlbfgs_bench,
    )

    cfg = MlbfgsBenchConfig(
        workloads=tuple(workload or PLANS), contenders=tuple(contender or DEFAULT_CONTENDERS),
        seeds=seeds, batch_size=batch_size, steps_scale=steps_scale, cost_rounds=cost_rounds,
        db=db, out=out,
    )
    summary = run_mlbfgs_bench(cfg, quiet=json_)
    if json_:
        _emit_json(summary)


# --- hogwild (S1) ----------------------------------------------------------------------------


@app.command()
def hogwild(
    workload: Annotated[str, typer.Option(help="Workload name (see `sgdlab list`).")],
    workers: Annotated[int, typer.Option(help="Lock-free worker processes.")] = 2,
    steps: Annotated[int, typer.Option(help="Updates by all workers together.")] = 100_000,
    lr: Annotated[float, typer.Option(help="Constant step (ignored when diminishing).")] = 0.1,
    schedule: Annotated[
        str, typer.Option(help="constant, or diminishing: alpha/(mu(t+E)).")
    ] = "constant",
    mu: Annotated[float | None, typer.Option("--mu", help="Strong convexity.")] = None,
    L: Annotated[float | None, typer.Option("--L", help="Component smoothness.")] = None,
    alpha: Annotated[float, typer.Option(help="alpha > 1 of the diminishing step.")] = 2.0,
    batch_size: Annotated[int, typer.Option(help="Samples per update.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the model, the shards and the order.")] = 0,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="workload.key=value: a workload option.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, or cuda[:N] with --allow-cuda.")] = "cpu",
    allow_cuda: Annotated[
        bool, typer.Option("--allow-cuda", help="Run lock-free on a CUDA model (no guarantee).")
    ] = False,
    json_: JsonOption = False,
) -> None:
    """Hogwild!: lock-free parallel SGD on one model in shared memory."""
    from sgdlab.run.hogwild import hogwild_once

    opt_options, wl_options = _parse_sets(set_ or [])
    if opt_options:
        raise typer.BadParameter(f"--set takes only workload.key=value here, got {opt_options}")
    rep = hogwild_once(workload, workers, steps, lr=lr, schedule=schedule, mu=mu, L=L,
                       alpha=alpha, seed=seed, batch_size=batch_size,
                       workload_options=wl_options, device=device, allow_cuda=allow_cuda)
    if json_:
        _emit_json(rep)
        return
    from sgdlab.report.tables import print_mapping

    print_mapping(f"Hogwild! {workload} · {workers} workers", {
        k: v for k, v in rep.items() if not isinstance(v, list)
    })


@bench_app.command("hogwild")
def bench_hogwild(
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
        _emit_json({k: v for k, v in rep.items() if k != "workloads"})
        return
    print_hogwild_table(rep)


# --- biased SGD against practice (S4) --------------------------------------------------------


@bench_app.command("biased-sgd")
def bench_biased_sgd(
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
    from sgdlab.experiments.biased_practice import (
        logistic_problem,
        practice_report,
        quadratic_problem,
    )

    if workload == "quadratic":
        problem = quadratic_problem(lam=0.05 if l2 is None else l2)
    else:
        from sgdlab.workloads import get_workload

        options: dict[str, Any] = {} if l2 is None else {"l2": l2}
        wl = get_workload(workload, **options)
        problem = logistic_problem(wl, rows=rows)
    rep = practice_report(problem, case, delta=delta, c=c, steps=steps, seeds=seeds,
                          alpha=alpha, plot=plot)
    if json_:
        _emit_json(rep)
        return
    from sgdlab.report.tables import print_mapping

    print_mapping(f"biased SGD on {rep['problem']}, case {case}", {
        k: v for k, v in rep.items() if k != "rows"
    })
    for row in rep["rows"]:
        print_mapping(f"{row['plan']} steps, {row['direction']} error", row)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every user error into ``error: …`` and exit 2."""
    try:
        rv = app(args=argv, standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except Exit as exc:
        return exc.exit_code
    except Abort:
        sys.stderr.write("error: aborted\n")
        return 130
    except TyperException as exc:
        sys.stderr.write(f"error: {exc.format_message().splitlines()[0]}\n")
        return 2
    except (SgdlabError, ValueError, OSError) as exc:  # OSError: a bad path (--out is a file)
        if os.environ.get("SGDLAB_DEBUG"):
            raise
        sys.stderr.write(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130

