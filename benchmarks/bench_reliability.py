"""Reliability figures of the distributed runs, with real faults:

* how long the run takes to end once a rank is killed (SIGKILL) — the collective timeout is
  60 s, so anything near it would mean the peers waited for the timeout instead of noticing;
* how long it takes once a rank stalls (SIGSTOP), against the collective timeout it must honour;
* what a consistent checkpoint (every rank's state at one step, fsynced, then a barrier) costs,
  in milliseconds and in training steps, on cnn-fmnist with two ranks.

Run (about 3 minutes here)::

    flock /tmp/sgdlab-bench.lock .venv/bin/python benchmarks/bench_reliability.py --trials 5 \
        --out benchmarks/results/reliability-raw.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sgdlab.distributed.launch import RankFailure
from sgdlab.run.config import DistConfig
from sgdlab.run.dist import run_dist


def _median(values: list[float], digits: int = 2) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"[{min(values):.{digits}f}, {max(values):.{digits}f}]")


def time_to_end(sig: signal.Signals, collective_timeout_s: float) -> tuple[float, str]:
    """Seconds from faulting rank 1 (after the first checkpoint) to the run's RankFailure."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ck"
        config = DistConfig(algo="overlap", world_size=2, workload="logreg-breast-cancer",
                            lr=0.05, batch_size=8, steps=5000, latency_ms=15.0, checkpoint_every=20,
                            checkpoint_dir=str(root), collective_timeout_s=collective_timeout_s)
        pids: list[int] = []
        box: list[BaseException] = []

        def run() -> None:
            try:
                run_dist(config, {"on_start": pids.extend}, timeout_s=300)
            except BaseException as exc:  # noqa: B036 - reported below
                box.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        while not list(root.glob("step-*/COMPLETE")):
            if not thread.is_alive():
                raise RuntimeError(f"the run ended before its first checkpoint: {box}")
            time.sleep(0.01)
        t0 = time.monotonic()
        os.kill(pids[1], sig)
        thread.join(300)
        elapsed = time.monotonic() - t0
        if not box or not isinstance(box[0], RankFailure):
            raise RuntimeError(f"expected a RankFailure, got {box}")
        return elapsed, str(box[0])


def cut_cost(steps: int, every: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        config = DistConfig(algo="overlap", world_size=2, workload="cnn-fmnist", lr=0.05,
                            batch_size=32, steps=steps, checkpoint_every=every,
                            checkpoint_dir=str(Path(tmp) / "ck"), eval_every=steps)
        result = run_dist(config, timeout_s=600)
    ranks = result["ranks"]
    per_cut = max(r["checkpoint_seconds"] / r["checkpoints"] for r in ranks)
    per_step = result["wall_seconds"] / result["steps"]
    return {"ms_per_cut": per_cut * 1e3, "ms_per_step": per_step * 1e3,
            "cut_in_steps": per_cut / per_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--stall-timeout", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    dead, stalled, cuts = [], [], []
    message_dead = message_stalled = ""
    for trial in range(args.trials):
        seconds, message_dead = time_to_end(signal.SIGKILL, 60.0)
        dead.append(seconds)
        seconds, message_stalled = time_to_end(signal.SIGSTOP, args.stall_timeout)
        stalled.append(seconds)
        cuts.append(cut_cost(steps=60, every=10))
        print(f"trial {trial + 1}: dead {dead[-1]:.2f} s, stalled {stalled[-1]:.2f} s, "
              f"cut {cuts[-1]['ms_per_cut']:.1f} ms = {cuts[-1]['cut_in_steps']:.2f} steps",
              flush=True)

    summary: dict[str, Any] = {
        "trials": args.trials,
        "dead_rank_seconds": _median(dead),
        "stalled_rank_seconds": _median(stalled),
        "stall_timeout_s": args.stall_timeout,
        "stalled_minus_timeout_seconds": _median([s - args.stall_timeout for s in stalled]),
        "cut_ms": _median([c["ms_per_cut"] for c in cuts], 1),
        "step_ms": _median([c["ms_per_step"] for c in cuts], 1),
        "cut_in_steps": _median([c["cut_in_steps"] for c in cuts]),
        "message_dead": message_dead,
        "message_stalled": message_stalled,
        "raw": {"dead": dead, "stalled": stalled, "cuts": cuts},
    }
    for key, value in summary.items():
        if key != "raw":
            print(f"{key}: {value}")
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
