"""Harness overhead: time per step of sgdlab's runner against a bare PyTorch loop.

Same workload, batch size, seed and optimizer; the two alternate, `--repeats` times each, in
one process, so machine noise hits both alike. Per step the runner is charged everything its
loop does except evaluation and checkpointing (batch gathering, the closure, the optimizer,
the clock, logging, the progress hook); the bare loop is the twenty lines below.

    .venv/bin/python benchmarks/bench_harness.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sgdlab.bench.config import TrainConfig
from sgdlab.bench.runner import train
from sgdlab.workloads import Workload, get_workload


def bare_loop(workload: Workload, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """The baseline: a plain PyTorch loop with the same batches. Returns seconds per step."""
    torch.manual_seed(seed)
    model = workload.make_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n, per_epoch = workload.num_train, workload.num_train // batch_size
    perm = torch.empty(0, dtype=torch.long)
    start = time.perf_counter()
    for step in range(steps):
        epoch, pos = divmod(step, per_epoch)
        if pos == 0:
            perm = torch.randperm(
                n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            )
        x, y = workload.batch(perm[pos * batch_size : (pos + 1) * batch_size])
        opt.zero_grad()
        loss = workload.loss(model, x, y)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def harness(
    workload: Workload, steps: int, batch_size: int, lr: float, seed: int, tmp: Path
) -> float:
    config = TrainConfig(
        workload.name,
        "sgd",
        lr,
        steps,
        batch_size,
        seed,
        eval_every=steps,
        db=tmp / "r.db",
        out=tmp / "out",
        progress=False,
    )
    result = train(config, workload=workload)
    return (result.loop_seconds - result.outside_clock_seconds) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="logreg-fmnist,mlp-mnist,cnn-fmnist")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps_for = {"logreg-fmnist": 3000, "mlp-mnist": 2000, "cnn-fmnist": 300}
    print(f"threads={args.threads} batch={args.batch_size} repeats={args.repeats}")
    print("| workload | steps | bare ms/step | sgdlab ms/step | ratio median [min, max] |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for name in args.workloads.split(","):
            wl = get_workload(name)
            steps = steps_for.get(name, 500)
            bare, ours, ratios = [], [], []
            for r in range(args.repeats):
                b = bare_loop(wl, steps, args.batch_size, 0.05, seed=r)
                h = harness(wl, steps, args.batch_size, 0.05, r, Path(d))
                bare.append(b)
                ours.append(h)
                ratios.append(h / b)
            print(
                f"| {name} | {steps} | {1e3 * statistics.median(bare):.3f} "
                f"| {1e3 * statistics.median(ours):.3f} | {statistics.median(ratios):.3f} "
                f"[{min(ratios):.3f}, {max(ratios):.3f}] |"
            )


if __name__ == "__main__":
    main()
