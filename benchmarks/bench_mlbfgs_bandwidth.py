"""mL-BFGS at the memory-bandwidth limit: the step's bytes per second against a tensor copy's,
and whole iterations against SGD-momentum's on real workloads, all measured in one run.

* **bandwidth**: one parameter of ``n`` floats (one block), history ``m``, ``T = 10``; the
  step's minimal traffic is :math:`(4m + 10)\\,n` floats (two passes over the ``2m`` history
  rows, the averages, the gradient, the heavy ball and the parameter). A copy of ``2m n``
  floats (the history's size, so that it streams from memory as the step does, not from the
  last-level cache; :math:`4mn` floats moved), an SGD-momentum step and an mL-BFGS step are
  timed in interleaved rounds (each round ``T`` steps, so a pair step is included); the
  fraction is
  ``(4m+10) n / t_mlbfgs`` over ``4m n / t_copy``. Goal: >= 0.7. Beside them, in the same
  rounds, an mL-BFGS step with a bfloat16 history (``history_dtype``): its minimal traffic is
  :math:`(2m + 10)\,n` floats' worth (the history's two passes at half the bytes).
* **iterations**: :func:`sgdlab.experiments.mlbfgs_cost.step_cost` (forward, backward, step,
  interleaved rounds) on ``mlp-mnist`` and ``cnn-fmnist``. Goals: <= 1.6x and <= 1.1x.

Median and [min, max] over rounds; one thread.

Run:  flock /tmp/sgdlab-bench.lock nice -n 0 env PYTHONPATH=src python \\
          benchmarks/bench_mlbfgs_bandwidth.py [--n 2000000] [--m 10] [--rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from sgdlab.experiments.mlbfgs_cost import step_cost
from sgdlab.optim.mlbfgs import MLBFGS
from sgdlab.workloads import get_workload

GOALS = {"bandwidth": 0.7, "mlp-mnist": 1.6, "cnn-fmnist": 1.1}


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, min, max."""
    return statistics.median(values), min(values), max(values)


def bandwidth(n: int, m: int, rounds: int, period: int = 10) -> dict[str, Any]:
    """Seconds per copy / SGD-momentum step / mL-BFGS step on ``n`` floats, interleaved."""
    torch.manual_seed(0)
    # The copy streams as many bytes as the history holds (2m n floats each way), so that it,
    # like the step, runs from memory and not from the last-level cache.
    src, dst = torch.randn(2 * m * n), torch.empty(2 * m * n)
    params = {name: torch.nn.Parameter(torch.randn(n) * 0.01)
              for name in ("sgd", "mlbfgs", "mlbfgs-bf16")}
    grads = [torch.randn(n) * 1e-3 for _ in range(period)]
    sgd = torch.optim.SGD([params["sgd"]], lr=1e-3, momentum=0.9)
    ours = MLBFGS([params["mlbfgs"]], lr=1e-3, history_size=m, update_freq=period)
    narrow = MLBFGS([params["mlbfgs-bf16"]], lr=1e-3, history_size=m, update_freq=period,
                    history_dtype=torch.bfloat16)

    def stepper(name: str, opt: torch.optim.Optimizer) -> Callable[[int], None]:
        def run(k: int) -> None:
            params[name].grad = grads[k % period] + 1e-2 * params[name].detach()
            opt.step()

        return run

    sides: dict[str, Callable[[int], None]] = {
        "copy": lambda k: dst.copy_(src),
        "sgd-momentum": stepper("sgd", sgd),
        "mlbfgs": stepper("mlbfgs", ours),
        "mlbfgs-bf16": stepper("mlbfgs-bf16", narrow),
    }
    for k in range((m + 2) * period + 1):  # fill the history before timing
        for name in ("mlbfgs", "mlbfgs-bf16", "sgd-momentum"):
            sides[name](k)
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            start = time.perf_counter()
            for k in range(period):
                sides[name](k)
            seconds[name].append((time.perf_counter() - start) / period)
    floats = {"copy": 4 * m * n, "mlbfgs": (4 * m + 10) * n, "mlbfgs-bf16": (2 * m + 10) * n}

    def fractions(name: str) -> list[float]:
        return [(floats[name] / t_m) / (floats["copy"] / t_c)
                for t_m, t_c in zip(seconds[name], seconds["copy"], strict=True)]

    copy_gbs = [floats["copy"] * 4 / t / 1e9 for t in seconds["copy"]]
    return {
        "n": n,
        "m": m,
        "T": period,
        "ms": {name: spread([1e3 * t for t in ts]) for name, ts in seconds.items()},
        "copy_GBps": spread(copy_gbs),
        "fraction_of_copy_bandwidth": spread(fractions("mlbfgs")),
        "bf16_fraction_of_copy_bandwidth": spread(fractions("mlbfgs-bf16")),
        "mlbfgs_over_sgd_step": spread(
            [a / b for a, b in zip(seconds["mlbfgs"], seconds["sgd-momentum"], strict=True)]
        ),
        "bf16_over_fp32_history_step": spread(
            [a / b for a, b in zip(seconds["mlbfgs-bf16"], seconds["mlbfgs"], strict=True)]
        ),
        "history_held": ours.diagnostics()["history"],
        "bf16_history_held": narrow.diagnostics()["history"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--m", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cost-rounds", type=int, default=7)
    parser.add_argument("--cost-steps", type=int, default=20)
    parser.add_argument("--workloads", default="mlp-mnist,cnn-fmnist")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out: dict[str, Any] = {"torch": torch.__version__, "args": vars(args)}
    bw = bandwidth(args.n, args.m, args.rounds)
    out["bandwidth"] = bw
    frac = bw["fraction_of_copy_bandwidth"]
    print(f"n = {args.n}, m = {args.m}, T = 10, {args.rounds} rounds, 1 thread")
    for name, ms in bw["ms"].items():
        print(f"  {name:<14} {ms[0]:8.3f} ms [{ms[1]:.3f}-{ms[2]:.3f}]")
    print(f"  copy bandwidth {bw['copy_GBps'][0]:.2f} GB/s")
    ratio = bw["mlbfgs_over_sgd_step"]
    print(f"  mL-BFGS step / SGD-momentum step: {ratio[0]:.2f} [{ratio[1]:.2f}-{ratio[2]:.2f}]")
    met = frac[0] >= GOALS["bandwidth"]
    print(
        f"  (4m+10)n floats at {frac[0]:.2f} [{frac[1]:.2f}-{frac[2]:.2f}] of copy bandwidth "
        f"(goal >= {GOALS['bandwidth']}: {'met' if met else 'missed'})"
    )
    b16, rel = bw["bf16_fraction_of_copy_bandwidth"], bw["bf16_over_fp32_history_step"]
    print(f"  bfloat16 history: (2m+10)n floats at {b16[0]:.2f} [{b16[1]:.2f}-{b16[2]:.2f}] of "
          f"copy bandwidth; step {rel[0]:.2f} [{rel[1]:.2f}-{rel[2]:.2f}] x the float32 one's")
    out["iterations"] = []
    for name in [w for w in args.workloads.split(",") if w]:
        cost = step_cost(get_workload(name), 128, args.cost_rounds, args.cost_steps)
        goal = GOALS.get(name)
        r = (cost["ratio"].median, cost["ratio"].low, cost["ratio"].high)
        verdict = ""
        if goal is not None:
            verdict = f" (goal <= {goal}: {'met' if r[0] <= goal else 'missed'})"
        print(
            f"{name}: SGD-momentum {cost['sgd_momentum_ms'].median:.2f} ms, mL-BFGS "
            f"{cost['mlbfgs_ms'].median:.2f} ms per iteration, ratio {r[0]:.2f} "
            f"[{r[1]:.2f}-{r[2]:.2f}]{verdict}"
        )
        out["iterations"].append(cost)
    if args.json:
        print(json.dumps(out, default=dataclasses.asdict))


if __name__ == "__main__":
    main()
