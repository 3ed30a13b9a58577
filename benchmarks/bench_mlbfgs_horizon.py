"""mL-BFGS over a longer horizon, under the paper's training protocol: several epochs, a linear
learning-rate warm-up then step decay, weight decay and momentum, against SGD-momentum, AdamW,
SOAP (``peer:soap``) and ``torch.optim.LBFGS``.

**Protocol.** Every contender trains with the same schedule on its learning rate (the
runner's ``TrainConfig(schedule="step", warmup=..., milestones=..., gamma=...)``, so each
stored run records it): linear warm-up over the first ``--warmup`` fraction of its steps,
then times ``--gamma`` at each fraction in ``--milestones`` (default 5 %, then x0.1 at 50 %
and 75 %; a milestone falls at ``int(fraction * steps)``). mL-BFGS reads
``param_groups[i]["lr"]`` at every step, so the schedule reaches it as it reaches SGD. Weight
decay 5e-4 for SGD-momentum and mL-BFGS (AdamW keeps its decoupled 0.01, SOAP its default,
L-BFGS has none). Each contender is tuned on seed 0 over its reference learning rate times
``--lr-factors``; the chosen one (fewest steps to target, then lowest final training
objective) then runs on seeds ``1 .. seeds-1``. L-BFGS takes batches of 1024 and as many
steps as give the same number of samples.

Every run goes through the project's runner (:class:`sgdlab.run.train.SingleRun`, one thread,
the clock excluding evaluation). ``--eval-test``/``--eval-train`` evaluate on fixed seeded
subsets (the evaluation is outside the clock but not outside the machine's time);
``--hard-target`` also reports epochs and seconds to a harder level, read from the same runs'
evaluations (tuning stays on the target); ``--objective-target`` makes a level of the
training objective (on the ``--eval-train`` subset, at most the level) the tuning's criterion
and reports epochs and seconds to it, for a convex workload whose optimum is known, where an
optimizer's speed shows in the objective long after the test accuracy has levelled. Reported
per contender, median [min, max] over seeds: epochs and training seconds to the workload's
target (``None``: not reached; a median over seeds counts those as infinite), final test
accuracy, test loss and training objective.
Goal: mL-BFGS in fewer epochs than every baseline and in at most 1.0x the best baseline's
time.

Scaled down from the paper's (Niu et al., TMLR 2023: ResNets on CIFAR-10/ImageNet, epochs of
warm-up, decay at fixed epochs) to what two CPU cores run in 15 minutes: the schedule's shape
is kept, its milestones are fractions of this run's steps. (Runs stored before the schedule
was a ``TrainConfig`` field set it with a ``LambdaLR`` outside the config, milestones at
``round(fraction * steps)``, and do not record it; the suite tag names the benchmark.)

``--set KEY=VALUE`` (repeatable) gives the ``mlbfgs`` contender a hyperparameter (a JSON
value: ``damping=[0.01,1e4,0]``, ``max_norm=null``), ``--set workload.KEY=VALUE`` the workload
an option (``workload.l2=1e-4``); both are stored in the runs' configs.

``--grid NAME:KEY=[V1,V2,...]`` (repeatable; a JSON list) widens contender ``NAME``'s seed-0
tuning from its lr factors to their product with these values (``--grid
'sgd-momentum:momentum=[0.9,0.97]'``, ``--grid 'mlbfgs:damping=[[0.5,2,0],[0.01,1e4,0]]'``):
the chosen configuration, lr and options, then runs on the other seeds. The key ``options``
takes whole option sets, JSON objects, for settings that go together (``--grid
'mlbfgs:options=[{}, {"damping": [0.01, 1e4, 0], "max_norm": null}]'``). Give every contender
as many configurations as any other has, or say why not: the tuning budget is part of the
comparison.

``sgd-momentum-clip`` is SGD with heavy ball on the gradient clipped to mL-BFGS's global norm
0.3, with mL-BFGS's decoupled weight decay (the registry's ``clip-sgd``): mL-BFGS without
curvature pairs at SGD's cost per step, the baseline for what the clip alone buys.

Run:  flock /tmp/sgdlab-bench.lock nice -n 0 env PYTHONPATH=src python \\
          benchmarks/bench_mlbfgs_horizon.py [--workload mlp-mnist] [--epochs 3] [--json]
      ``--tiny``: two contenders, two epochs of logreg-breast-cancer (the smoke test).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from typer import BadParameter

from sgdlab.cli.options import parse_sets
from sgdlab.errors import ConfigError, DivergenceError
from sgdlab.experiments.mlbfgs import CONTENDERS, _bench_workload, _counted, lr_grid
from sgdlab.experiments.mlbfgs_plan import Contender, WorkloadPlan
from sgdlab.report.plots import plot_workload
from sgdlab.report.scoring import spread
from sgdlab.run.config import TrainConfig
from sgdlab.run.loop import first_reaching
from sgdlab.run.store import ResultStore
from sgdlab.run.train import RunResult, SingleRun
from sgdlab.workloads import Workload

WD = 5e-4  # the coupled weight decay of SGD-momentum and mL-BFGS
HORIZON: dict[str, Contender] = {
    "sgd-momentum": replace(CONTENDERS["sgd-momentum"],
                            options={"momentum": 0.9, "weight_decay": WD}),
    # mL-BFGS's clip, decay and reference lr (0.1): mL-BFGS without pairs, at SGD's cost.
    "sgd-momentum-clip": Contender(
        "sgd-momentum-clip", "clip-sgd", 0.1,
        {"momentum": 0.9, "max_norm": 0.3, "weight_decay": WD},
    ),
    "adamw": CONTENDERS["adamw"],
    "soap": CONTENDERS["soap"],
    "lbfgs": CONTENDERS["lbfgs"],
    "mlbfgs": replace(CONTENDERS["mlbfgs"],
                      options={**CONTENDERS["mlbfgs"].options, "weight_decay": WD}),
    "mlbfgs-authors": Contender(
        "mlbfgs-authors", "mlbfgs", 0.1,
        {"history_size": 10, "update_freq": 10, "weight_decay": WD, "variant": "authors"},
    ),
}
GOAL_TIME_RATIO = 1.0


@dataclass
class Trial:
    contender: str
    lr: float
    options: dict[str, Any]  # the contender's options in this run
    seed: int
    batch: int
    steps: int
    result: RunResult | None  # None: diverged
    evals: int  # closure calls (gradient evaluations) over the run

    def key(self, objective: float | None = None) -> tuple[float, float]:
        """Fewest steps to target (to the training objective ``objective`` if given), then the
        lowest final training objective."""
        r = self.result
        if r is None:
            return (math.inf, math.inf)
        final = r.final_loss if math.isfinite(r.final_loss) else math.inf
        step = r.step_to_target if objective is None else _objective_step(self, objective)
        return (math.inf if step is None else float(step), final)


def run_one(args: argparse.Namespace, w: Workload, c: Contender, lr: float, seed: int,
            tag: str) -> Trial:
    batch = min(c.batch_size or args.batch, w.num_train)
    steps = max(1, round(args.epochs * w.num_train / batch))
    per_epoch = w.num_train / batch
    config = TrainConfig(
        workload=w.name, optimizer=c.optimizer, lr=lr, steps=steps, batch_size=batch, seed=seed,
        optimizer_options=dict(c.options), workload_options=dict(args.workload_options),
        schedule="step", warmup=args.warmup,
        milestones=args.milestones, gamma=args.gamma,
        eval_every=max(1, round(per_epoch / args.evals)),
        db=args.db, out=args.out / "runs", threads=1, suite=tag, progress=False,
    )
    counted = _counted(w)
    try:
        result: RunResult | None = SingleRun(config, counted).run()
    except DivergenceError:
        result = None
    return Trial(c.name, lr, dict(c.options), seed, batch, steps, result, sum(counted.evals))


def _median_inf(values: list[float | None]) -> float:
    return float(statistics.median([math.inf if v is None else v for v in values]))


def _when(w: Workload, t: Trial, first: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """Epochs and training seconds of ``t`` at its evaluation ``first`` (``None, None``: none)."""
    if first is None:
        return None, None
    return first["step"] * t.batch / w.num_train, first["train_seconds"]


def to_level(w: Workload, t: Trial, level: float) -> tuple[float | None, float | None]:
    """Epochs and training seconds of ``t`` at its first evaluation whose metric reached
    ``level`` (``None, None``: never, or diverged)."""
    return _when(w, t, None if t.result is None
                 else first_reaching(t.result.evaluations, w.metric, level))


def _objective_row(t: Trial, level: float) -> dict[str, Any] | None:
    """The first evaluation of ``t`` whose training objective is at most ``level``."""
    if t.result is None:
        return None
    return next((e for e in t.result.evaluations
                 if math.isfinite(e["train_loss"]) and e["train_loss"] <= level), None)


def _objective_step(t: Trial, level: float) -> int | None:
    first = _objective_row(t, level)
    return None if first is None else int(first["step"])


def to_objective(w: Workload, t: Trial, level: float) -> tuple[float | None, float | None]:
    """Epochs and training seconds of ``t`` at its first evaluation with the training objective
    at most ``level`` (``None, None``: never, or diverged)."""
    return _when(w, t, _objective_row(t, level))


def _level_columns(suffix: str, pairs: list[tuple[float | None, float | None]]) -> dict[str, Any]:
    epochs, seconds = zip(*pairs, strict=True)
    return {f"reached_{suffix}": sum(e is not None for e in epochs),
            f"epochs_to_{suffix}": str(spread(epochs)),
            f"seconds_to_{suffix}": str(spread(seconds)),
            f"median_epochs_{suffix}": _median_inf(list(epochs)),
            f"median_seconds_{suffix}": _median_inf(list(seconds))}


def row(w: Workload, trials: list[Trial], hard: float | None = None,
        objective: float | None = None) -> dict[str, Any]:
    t0 = trials[0]
    res = [t.result for t in trials if t.result is not None]
    epochs = [None if t.result is None or t.result.step_to_target is None
              else t.result.step_to_target * t.batch / w.num_train for t in trials]
    seconds = [None if t.result is None else t.result.time_to_target for t in trials]
    extra: dict[str, Any] = {}
    if hard is not None:
        extra |= _level_columns("hard", [to_level(w, t, hard) for t in trials])
    if objective is not None:
        extra |= _level_columns("objective", [to_objective(w, t, objective) for t in trials])
    return {
        "contender": t0.contender, "lr": t0.lr, "options": t0.options, "batch": t0.batch,
        "steps": t0.steps,
        "runs": len(trials), "diverged": len(trials) - len(res),
        "reached": sum(e is not None for e in epochs),
        "epochs_to_target": str(spread(epochs)), "seconds_to_target": str(spread(seconds)),
        "median_epochs": _median_inf(epochs), "median_seconds": _median_inf(seconds),
        **extra,
        "grad_evals_per_step": statistics.mean(t.evals / t.steps for t in trials),
        "ms_per_step": str(spread(1e3 * r.train_seconds / r.steps for r in res)),
        "test_accuracy": str(spread(r.metric_value for r in res)),
        "test_loss": str(spread(r.test_loss for r in res)),
        "final_objective": str(spread(r.final_loss for r in res)),
        "run_ids": [r.run_id for r in res],
    }


def goals(rows: list[dict[str, Any]], suffix: str = "") -> dict[str, Any]:
    """The two goals at the target (``suffix`` ``""``), at the harder level (``"_hard"``) or at
    the training-objective level (``"_objective"``)."""
    ours = next(r for r in rows if r["contender"] == "mlbfgs")
    others = [r for r in rows if not r["contender"].startswith("mlbfgs")]
    best_e = min((r["median_epochs" + suffix] for r in others), default=math.inf)
    best_s = min((r["median_seconds" + suffix] for r in others), default=math.inf)
    e, s = ours["median_epochs" + suffix], ours["median_seconds" + suffix]
    ratio = s / best_s if math.isfinite(s) and math.isfinite(best_s) and best_s > 0 else None
    return {
        "mlbfgs_epochs": e, "best_baseline_epochs": best_e,
        # No baseline in the run: nothing to beat, so no verdict.
        "epochs_goal_met": (math.isfinite(e) and e < best_e) if others else None,
        "mlbfgs_seconds": s, "best_baseline_seconds": best_s, "time_ratio": ratio,
        "time_goal_met": (math.isfinite(s) and s <= GOAL_TIME_RATIO * best_s) if others else None,
    }


def markdown(summary: dict[str, Any]) -> str:
    keys = ["contender", "lr", "batch", "steps", "reached", "epochs_to_target",
            "seconds_to_target", "ms_per_step", "grad_evals_per_step", "test_accuracy",
            "test_loss", "final_objective"]
    if summary.get("hard_target") is not None:
        keys[7:7] = ["reached_hard", "epochs_to_hard", "seconds_to_hard"]
    if summary.get("objective_target") is not None:
        keys[7:7] = ["reached_objective", "epochs_to_objective", "seconds_to_objective"]
    lines = ["| " + " | ".join(k.replace("_", " ") for k in keys) + " |",
             "|" + "---|" * len(keys)]
    for r in summary["rows"]:
        cells = [f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        cells[keys.index("reached")] = f"{r['reached']}/{r['runs']}"
        for key in ("reached_hard", "reached_objective"):
            if key in keys:
                cells[keys.index(key)] = f"{r[key]}/{r['runs']}"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Tuning (seed 0): " + "; ".join(
        f"{t['contender']} lr={t['lr']}"
        + "".join(f" {k}={json.dumps(v)}" for k, v in t.get("grid", {}).items())
        + f": step {t['step_to_target']}"
        + (f", objective at step {t['step_to_objective']}" if "step_to_objective" in t else "")
        + f", final {t['final_objective']}"
        + (" (chosen)" if t["chosen"] else "")
        for t in summary["tuning"])]
    chosen = [r for r in summary["rows"] if r.get("grid")]
    if chosen:
        lines += ["", "Chosen options: " + "; ".join(
            f"{r['contender']} " + " ".join(f"{k}={json.dumps(v)}" for k, v in r["grid"].items())
            for r in chosen)]
    lines += ["", "Goals: " + json.dumps(summary["goals"])]
    if summary.get("hard_target") is not None:
        lines += ["", f"Goals at the harder level {summary['hard_target']}: "
                  + json.dumps(summary["goals_hard"])]
    if summary.get("objective_target") is not None:
        lines += ["", f"Goals at the training objective {summary['objective_target']} "
                  "(the tuning's criterion): " + json.dumps(summary["goals_objective"])]
    return "\n".join(lines) + "\n"


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with its infinite floats as ``None`` (JSON has no infinity)."""
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}


def parse_grids(items: list[str], names: list[str],
                error: Callable[[str], Any]) -> dict[str, dict[str, list[Any]]]:
    """``NAME:KEY=[V1,...]`` items as ``{name: {key: [values]}}`` (JSON lists as tuples)."""
    grids: dict[str, dict[str, list[Any]]] = {}
    for item in items:
        head, sep, raw = item.partition("=")
        name, colon, key = head.partition(":")
        try:
            values = json.loads(raw) if sep and colon and key else None
        except json.JSONDecodeError:
            values = None
        if not isinstance(values, list) or not values:
            error(f"--grid takes NAME:KEY=[V1,...] (a JSON list), got {item!r}")
            raise AssertionError  # error() exits
        if name not in names:
            error(f"--grid {item!r}: {name!r} is not among the contenders")
        key = key.strip()
        if key == "options" and not all(isinstance(v, dict) for v in values):
            error(f"--grid {item!r}: options takes a list of JSON objects")
        grids.setdefault(name, {})[key] = [
            {k: _tuples(x) for k, x in v.items()} if key == "options" else _tuples(v)
            for v in values]
    return grids


def _tuples(value: Any) -> Any:
    """A JSON list as a tuple, as ``--set`` reads it."""
    return tuple(value) if isinstance(value, list) else value


def _flat(combo: dict[str, Any]) -> dict[str, Any]:
    """A grid point's options: an ``options`` set spread out, other keys as they are."""
    out: dict[str, Any] = {}
    for key, value in combo.items():
        out.update(value if key == "options" else {key: value})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="mlp-mnist")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--contenders", default="sgd-momentum,adamw,soap,lbfgs,mlbfgs")
    p.add_argument("--lr-factors", default="0.333,1,3")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--evals", type=int, default=4, help="evaluations per epoch")
    p.add_argument("--target", type=float, default=None, help="default: the workload's own")
    p.add_argument("--hard-target", type=float, default=None,
                   help="also report epochs and seconds to this harder level, read from the "
                        "same runs (tuning stays on --target)")
    p.add_argument("--objective-target", type=float, default=None,
                   help="tune on the steps to this training objective (on the --eval-train "
                        "subset, at most this value) instead of the target, and report epochs "
                        "and seconds to it")
    p.add_argument("--max-norm", default=None,
                   help="mL-BFGS's clip for the mlbfgs contender ('none': no clip; default 0.3)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="an mlbfgs-contender hyperparameter (JSON value, e.g. "
                        "damping=[0.01,1e4,0], max_norm=null), or workload.KEY=VALUE for the "
                        "workload (e.g. workload.l2=1e-4); repeat for more")
    p.add_argument("--grid", dest="grids", action="append", default=[],
                   metavar="NAME:KEY=[V1,...]",
                   help="tune contender NAME over these values of KEY too (a JSON list), on "
                        "seed 0 with its lr factors; repeat for more keys or contenders")
    p.add_argument("--eval-test", type=int, default=None,
                   help="evaluate on a fixed seeded subset of this many test samples")
    p.add_argument("--eval-train", type=int, default=None,
                   help="training objective on a fixed seeded subset of this many samples")
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--milestones", default="0.5,0.75")
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--db", type=Path, default=Path("sgdlab-results/mlbfgs-horizon.db"))
    p.add_argument("--out", type=Path, default=Path("sgdlab-results/mlbfgs-horizon"))
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = p.parse_args(argv)
    if args.tiny:
        args.workload, args.epochs, args.batch, args.seeds = "logreg-breast-cancer", 2, 64, 2
        args.contenders, args.lr_factors, args.evals = "sgd-momentum,mlbfgs", "1", 2
    args.milestones = tuple(float(m) for m in args.milestones.split(","))
    names = args.contenders.split(",")
    unknown = [n for n in names if n not in HORIZON]
    if unknown or "mlbfgs" not in names:
        p.error(f"contenders: choose among {', '.join(HORIZON)}, mlbfgs included")
    factors = tuple(float(f) for f in args.lr_factors.split(","))
    try:
        mlbfgs_sets, args.workload_options = parse_sets(args.sets)
    except BadParameter as e:
        p.error(str(e))
    grids = parse_grids(args.grids, names, p.error)
    try:
        w = _bench_workload(args.workload, WorkloadPlan(
            steps=1, eval_every=1, eval_train=args.eval_train, eval_test=args.eval_test,
            target=args.target), **args.workload_options)  # the plan's steps, eval_every unread
    except ConfigError as e:
        p.error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"mlbfgs-horizon-{time.strftime('%Y%m%dT%H%M%S')}"
    started = time.perf_counter()
    rows, tuning = [], []
    for name in names:
        c = HORIZON[name]
        if name == "mlbfgs" and args.max_norm is not None:
            clip = None if args.max_norm.lower() == "none" else float(args.max_norm)
            c = replace(c, options={**c.options, "max_norm": clip})
        if name == "mlbfgs" and mlbfgs_sets:
            c = replace(c, options={**c.options, **mlbfgs_sets})
        keys = list(grids.get(name, {}))
        combos = [dict(zip(keys, values, strict=True))
                  for values in itertools.product(*(grids[name][k] for k in keys))] or [{}]
        grid = [(combo, run_one(args, w, replace(c, options={**c.options, **_flat(combo)}), lr,
                                0, tag))
                for combo in combos for lr in lr_grid(c.lr, factors)]
        best_combo, best = min(grid, key=lambda point: point[1].key(args.objective_target))
        tuning += [{"contender": name, "lr": t.lr, "chosen": t is best, "grid": combo,
                    "step_to_target": None if t.result is None else t.result.step_to_target,
                    **({} if args.objective_target is None else
                       {"step_to_objective": _objective_step(t, args.objective_target)}),
                    "final_objective": None if t.result is None else
                    float(f"{t.result.final_loss:.4g}")} for combo, t in grid]
        c = replace(c, options=best.options)
        trials = [best] + [run_one(args, w, c, best.lr, s, tag) for s in range(1, args.seeds)]
        rows.append(row(w, trials, args.hard_target, args.objective_target)
                    | {"grid": best_combo})
        print(f"{name}: lr {best.lr}, epochs to target {rows[-1]['epochs_to_target']}, "
              f"seconds {rows[-1]['seconds_to_target']}", flush=True)
    ids = {i for r in rows for i in r["run_ids"]}
    with ResultStore(args.db) as store:
        runs = [r for r in store.runs(suite=tag) if r.id in ids]
        plot = plot_workload(store, runs, args.out / f"mlbfgs-horizon-{w.name}.png")
    summary = {
        "suite": tag, "workload": w.name, "workload_options": args.workload_options,
        "mlbfgs_options": mlbfgs_sets, "grids": grids, "lr_factors": list(factors),
        "target": w.target, "epochs": args.epochs, "batch": args.batch,
        "hard_target": args.hard_target, "objective_target": args.objective_target,
        "eval_test": len(w.y_test),
        "eval_train": w.train_eval_size,
        "compute_seconds": time.perf_counter() - started, "plot": str(plot),
        "rows": [{k: v for k, v in r.items() if not k.startswith("median")}
                 | _finite({k: v for k, v in r.items() if k.startswith("median_epochs")})
                 for r in rows],
        "tuning": tuning,
        "goals": _finite(goals(rows)),
        "goals_hard": None if args.hard_target is None else _finite(goals(rows, "_hard")),
        "goals_objective": (None if args.objective_target is None
                            else _finite(goals(rows, "_objective"))),
    }
    (args.out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
