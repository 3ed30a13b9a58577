"""Are mL-BFGS's curvature pairs alive? Seed-0 runs of the horizon protocol with the pairs'
diagnostics: for each learning rate, the steps to the target and to a harder level, the pairs
accepted, damped and rejected (:meth:`MLBFGS.diagnostics`), the steps the clip bound, and the
distribution of the *raw* curvature ratio :math:`r = s^\\top y / s^\\top s` of every pair
before damping (recorded where the optimizer computes it), against the damping band.

The runs are those of ``bench_mlbfgs_horizon.py`` (its ``run_one``: the same schedule,
evaluation grid and runner), one contender, seed 0; nothing here is timed.

``--variant LABEL|LRS|JSON`` (repeatable) probes several settings in one invocation, each
over its own learning rates (``'open|0.1,0.3|{"damping": [0.01, 1e4, 0]}'``), at each batch
of ``--batches``; without it, one variant: ``--lrs`` and the ``--set`` options.

Run:  flock /tmp/sgdlab-bench.lock nice -n 0 env PYTHONPATH=src python \\
          benchmarks/probe_mlbfgs_pairs.py --batches 2048 --lrs 0.1,0.3,0.9 \\
          --set damping=[0.01,1e4,0] [--set max_norm=null]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import sgdlab.run.train as train_module
from sgdlab.cli.options import parse_sets
from sgdlab.optim import _history
from sgdlab.optim.mlbfgs import MLBFGS

_spec = importlib.util.spec_from_file_location(
    "bench_mlbfgs_horizon", Path(__file__).with_name("bench_mlbfgs_horizon.py"))
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_mlbfgs_horizon"] = bench
_spec.loader.exec_module(bench)

RATIOS: list[float] = []
STEPS: list[int] = []  # the optimizer's step at each ratio
BUILT: list[Any] = []


def _recording_damping(original: Any) -> Any:
    def damping_factors(ratio: torch.Tensor, damping: tuple[float, float, float]) -> torch.Tensor:
        values = ratio.detach().flatten().tolist()
        RATIOS.extend(values)
        STEPS.extend([int(BUILT[-1]._global()["step"]) if BUILT else -1] * len(values))
        return original(ratio, damping)
    return damping_factors


def _capturing(original: Any) -> Any:
    def load_optimizer(*args: Any, **kwargs: Any) -> Any:
        opt = original(*args, **kwargs)
        BUILT.append(opt)
        return opt
    return load_optimizer


def quantiles(values: list[float], qs: tuple[float, ...] = (0.1, 0.5, 0.9)) -> list[float]:
    if not values:
        return []
    t = torch.tensor(values, dtype=torch.float64)
    return [float(f"{v:.3g}") for v in torch.quantile(t, torch.tensor(qs, dtype=t.dtype))]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="logreg-fmnist")
    p.add_argument("--contender", default="mlbfgs")
    p.add_argument("--epochs", type=float, default=8.0)
    p.add_argument("--batches", default="2048")
    p.add_argument("--lrs", default="0.1,0.3,0.9")
    p.add_argument("--evals", type=int, default=16)
    p.add_argument("--target", type=float, default=None)
    p.add_argument("--hard-target", type=float, default=0.835)
    p.add_argument("--eval-train", type=int, default=10_000)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--milestones", default="0.5,0.75")
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--db", type=Path, default=Path("/tmp/sgdlab-probe/probe.db"))
    p.add_argument("--out", type=Path, default=Path("/tmp/sgdlab-probe"))
    p.add_argument("--variant", dest="variants", action="append", default=[],
                   metavar="LABEL|LRS|JSON")
    args = p.parse_args(argv)
    args.milestones = tuple(float(m) for m in args.milestones.split(","))
    sets, args.workload_options = parse_sets(args.sets)
    w = bench._bench_workload(args.workload, bench.WorkloadPlan(
        steps=1, eval_every=1, eval_train=args.eval_train, target=args.target),
        **args.workload_options)
    base = bench.HORIZON[args.contender]
    variants = [("set", args.lrs, sets)] if not args.variants else [
        (label, lrs, {k: tuple(v) if isinstance(v, list) else v
                      for k, v in json.loads(options).items()})
        for label, lrs, options in (v.split("|") for v in args.variants)]
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"probe-{time.strftime('%Y%m%dT%H%M%S')}"
    damping, load = _history._damping_factors, train_module.load_optimizer  # type: ignore[attr-defined]
    _history._damping_factors = _recording_damping(damping)  # type: ignore[attr-defined]
    train_module.load_optimizer = _capturing(load)  # type: ignore[attr-defined]
    rows = []
    try:
        for batch, (label, lrs, options) in itertools.product(
                [int(b) for b in args.batches.split(",")], variants):
            args.batch = batch  # what run_one reads
            c = replace(base, options={**base.options, **options})
            rows += probe(args, w, c, label, [float(v) for v in lrs.split(",")], tag)
    finally:  # put back what was recorded through
        _history._damping_factors, train_module.load_optimizer = damping, load  # type: ignore[attr-defined]
    return rows


def probe(args: argparse.Namespace, w: Any, c: Any, label: str, lrs: list[float],
          tag: str) -> list[dict[str, Any]]:
    rows = []
    for lr in lrs:
        RATIOS.clear()
        STEPS.clear()
        BUILT.clear()
        t = bench.run_one(args, w, c, lr, 0, tag)
        e82, _ = bench.to_level(w, t, w.target)
        e_hard, _ = bench.to_level(w, t, args.hard_target)
        row: dict[str, Any] = {
            "variant": label, "contender": c.name, "options": c.options, "batch": t.batch,
            "lr": lr,
            "steps": t.steps, "diverged": t.result is None,
            "step_to_target": None if e82 is None else round(e82 * w.num_train / t.batch),
            "step_to_hard": None if e_hard is None else round(e_hard * w.num_train / t.batch),
            "final_accuracy": None if t.result is None else round(t.result.metric_value, 4),
            "final_objective": None if t.result is None else round(t.result.final_loss, 5),
        }
        opt = BUILT[0] if BUILT else None
        if isinstance(opt, MLBFGS):
            d = opt.diagnostics()
            sigma_low, sigma_high, _ = opt.param_groups[0]["damping"]
            row |= {k: d[k] for k in ("pairs_accepted", "pairs_damped", "pairs_rejected",
                                      "clipped_steps", "nonfinite_resets")}
            row |= {"raw_ratio_q10_50_90": quantiles(RATIOS), "pairs_formed": len(RATIOS),
                    "below_band": sum(r < sigma_low for r in RATIOS),
                    "above_band": sum(r > sigma_high for r in RATIOS)}
            # The same by phase of the schedule: up to the first decay, to the second, after.
            edges = [0, *(int(m * t.steps) for m in args.milestones), t.steps + 1]
            row["raw_ratio_by_phase"] = [
                quantiles([r for r, k in zip(RATIOS, STEPS, strict=True) if lo < k <= hi])
                for lo, hi in itertools.pairwise(edges)]
        elif opt is not None and hasattr(opt, "clip_stats"):
            row |= opt.clip_stats()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
