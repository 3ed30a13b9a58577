"""Does the proximal term do anything at larger lambda? A follow-up to ``sgdlab bench smallbatch``.

With ``--baseline-rates``, also the plain optimizer at the prox variant's rate and at that
rate's mean under the in-window harmonic decay: is the prox variant's gain a lower rate?

At the learning rates ``bench smallbatch`` tuned, the pull toward the anchor per step is
``lr_k * 2 * lam`` (times about 1/(1 - momentum) for SGD with momentum): with lr ~ 0.006 and
lam <= 0.1 it is below 1e-2 even with momentum, so the term can hardly act within a window of 10
steps. This script reruns each prox variant at one batch size at the rate (and seeds, and
data) that the benchmark chose, over larger ``--lams``, and prints test accuracy mean ± std
beside the benchmark's own lam=0 ablation (the same runs with the term switched off).

    PYTHONPATH=src python benchmarks/bench_smallbatch_lambda.py \
        --results sgdlab-results/smallbatch-cnn-fmnist/smallbatch.json --lams 0.1,1,10
    PYTHONPATH=src python benchmarks/bench_smallbatch_lambda.py \
        --results sgdlab-results/smallbatch-cnn-fmnist/smallbatch.json --lams "" --baseline-rates
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from sgdlab.experiments.smallbatch import _Bench, split_workload
from sgdlab.experiments.smallbatch_plan import BASELINE_OF, SmallBatchPlan
from sgdlab.optim import PROX_DEFAULTS
from sgdlab.workloads import get_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a smallbatch.json")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lams", default="0.1,1,10")
    parser.add_argument(
        "--baseline-rates", action="store_true", help="also the baseline at the prox rates"
    )
    parser.add_argument("--db", type=Path, default=Path("sgdlab-results/smallbatch-lambda.db"))
    args = parser.parse_args()
    blob = json.loads(args.results.read_text())
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in blob["plan"].items()
    }
    plan = SmallBatchPlan(**fields)
    tag = f"smallbatch-lambda-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    bench = _Bench(plan, args.db, args.db.parent / "smallbatch-lambda", tag, Console(quiet=True))
    lams = [float(x) for x in args.lams.split(",") if x.strip()]
    window = PROX_DEFAULTS["window"]
    for name in plan.workloads:
        _, final = split_workload(get_workload(name), plan.subset, plan.validation)
        for variant in ("prox-sgd", "prox-adam"):
            lr = blob["chosen"][f"{name} b={args.batch} {variant}"]["lr"]
            accs: dict[str, list[float]] = {}
            lam0 = [
                r["accuracy"]
                for r in blob["records"]
                if r["variant"] == f"{variant} λ=0" and r["batch_size"] == args.batch
            ]
            accs["lam=0 (benchmark's ablation)"] = [100 * a for a in lam0 if a is not None]
            for lam in lams:
                runs = [
                    bench.run(final, args.batch, variant, "final", seed, lr, {"lam": lam})
                    for seed in range(1, plan.seeds + 1)
                ]
                accs[f"lam={lam:g}"] = [100 * r.accuracy for r in runs if r.accuracy is not None]
            if args.baseline_rates:
                # The plain optimizer at the prox rate, and at the prox rate's mean over a
                # window under the harmonic decay, H_S / S: is the gain a lower rate?
                base = BASELINE_OF[variant]
                mean_factor = sum(1 / (k + 1) for k in range(window)) / window
                for label, rate in (("prox lr", lr), ("H_S/S x prox lr", lr * mean_factor)):
                    runs = [
                        bench.run(final, args.batch, base, "final", seed, rate, {})
                        for seed in range(1, plan.seeds + 1)
                    ]
                    accs[f"{base} at {label} = {rate:.3g}"] = [
                        100 * r.accuracy for r in runs if r.accuracy is not None
                    ]
            print(f"{name} batch {args.batch} {variant} lr={lr}: test accuracy % by lam")
            for lam_label, values in accs.items():
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                print(
                    f"  {lam_label:<32} {statistics.fmean(values):6.2f} ± {spread:.2f}"
                    f"  ({len(values)}/{plan.seeds} runs finished)"
                )


if __name__ == "__main__":
    main()
