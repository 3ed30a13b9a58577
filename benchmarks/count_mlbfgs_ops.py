"""How many ATen operations one mL-BFGS step dispatches on a workload (no timing).

On small models the step's cost is its count of small operations as much as its bytes (see
``benchmarks/results/mlbfgs_step_ops.md``). This counts the *top-level* ATen operations (those
not called by another ATen operation) that ``torch.profiler`` records in one step between pair
steps and in one pair step, with the history full, as ``sgdlab bench``'s cost measurement
sets it up (history 10, T = 10, batch 128, the ``blocks="layer"`` default). It reads no clock,
so it needs no benchmark lock.

Run:  PYTHONPATH=src python benchmarks/count_mlbfgs_ops.py [--workload mlp-mnist] [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from sgdlab.optim import load_optimizer
from sgdlab.workloads import get_workload


def count_ops(workload: str, history: int = 10, period: int = 10) -> dict[str, Any]:
    """Top-level ATen operations of a step between pair steps and of a pair step."""
    if history < 1 or period < 2:
        raise ValueError(f"Invalid history/period: {history}, {period} (>= 1 and >= 2)")
    torch.set_num_threads(1)
    w = get_workload(workload)
    model = w.make_model(0)
    opt = load_optimizer("mlbfgs", model.parameters(), lr=0.1, history_size=history,
                         update_freq=period)
    gen = torch.Generator().manual_seed(0)

    def backward() -> None:
        x, y = w.batch(torch.randint(0, w.num_train, (128,), generator=gen))
        opt.zero_grad(set_to_none=True)
        w.loss(model, x, y).backward()

    def counted() -> dict[str, Any]:
        backward()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            opt.step()
        ops: collections.Counter[str] = collections.Counter()
        for event in prof.events():
            parent = event.cpu_parent
            if event.name.startswith("aten::") and (
                parent is None or not parent.name.startswith("aten::")
            ):
                ops[event.name] += 1
        return {"total": sum(ops.values()), "by_op": dict(ops.most_common())}

    # The history full (pairs at steps 1 + kT): step (m + 2) T + 1 is a pair step.
    for _ in range((history + 2) * period + 1):
        backward()
        opt.step()
    out: dict[str, Any] = {"workload": workload, "history": history, "T": period}
    out["step"] = counted()
    for _ in range(period - 2):
        backward()
        opt.step()
    out["pair_step"] = counted()
    out["per_step_average"] = (
        (period - 1) * out["step"]["total"] + out["pair_step"]["total"]
    ) / period
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="mlp-mnist")
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--period", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    out = count_ops(args.workload, args.history, args.period)
    print(
        f"{args.workload}: {out['step']['total']} top-level ATen operations a step, "
        f"{out['pair_step']['total']} a pair step, {out['per_step_average']:.1f} on average "
        f"(T = {args.period})"
    )
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
