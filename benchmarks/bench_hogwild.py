"""Hogwild! evidence (issue 3): the measured ‖w_t - w*‖² under the bound, and throughput.

Run (the shared machine is noisy: one benchmark at a time)::

    flock /tmp/sgdlab-bench.lock env PYTHONPATH=src python benchmarks/bench_hogwild.py \\
        --out benchmarks/results/hogwild [--seeds 3] [--sparse-steps 400000] [--fmnist-steps 40000]

On ``sparse-logreg`` (100,000 RCV1-like rows) and ``logreg-fmnist``: K = 1, 2, 4 Hogwild!
workers with the diminishing step from the estimated constants, ``--seeds`` seeds, variants
interleaved per seed; beside them the pattern of PyTorch's ``mnist_hogwild`` example with 2
processes (whole data set per process, no thread cap, per-process optimizer, dense autograd),
and the same with the thread cap, timed over ``--baseline-steps`` updates. Prints the table
and one JSON line, writes ``hogwild.json`` and the plots to ``--out``. ``sgdlab bench
hogwild`` runs the same with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

from sgdlab.experiments.hogwild import hogwild_bench, print_hogwild_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/hogwild"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sparse-steps", type=int, default=400_000)
    ap.add_argument("--fmnist-steps", type=int, default=40_000)
    ap.add_argument("--baseline-steps", type=int, default=1_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--workloads", nargs="+", default=["sparse-logreg", "logreg-fmnist"])
    ap.add_argument("--sparse-n", type=int, default=100_000, help="sparse-logreg n_samples")
    args = ap.parse_args()
    load_before = os.getloadavg()
    rep = hogwild_bench(
        args.out, workloads=args.workloads, workers=args.workers, seeds=args.seeds,
        steps={"sparse-logreg": args.sparse_steps, "logreg-fmnist": args.fmnist_steps},
        baseline_steps=args.baseline_steps,
        workload_options={"sparse-logreg": {"n_samples": args.sparse_n}},
        progress=lambda msg: print(msg, flush=True),
    )
    print_hogwild_table(rep)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({"load_before": load_before, "uptime_after": uptime, "rows": rep["rows"],
                      "measured": {k: {v: {"under_recursion_everywhere":
                                           m["under_recursion_everywhere"],
                                           "under_closed_form_everywhere":
                                           m["under_closed_form_everywhere"]}
                                       for v, m in s["measured"].items()}
                                   for k, s in rep["workloads"].items()}}))


if __name__ == "__main__":
    main()
