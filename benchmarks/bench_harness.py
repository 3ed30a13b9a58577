"""Harness overhead: time per step of sgdlab's runner against a bare PyTorch loop.

Same workload, batch size, seed and optimizer; the variants alternate, `--repeats` times each,
in one process, so machine noise hits all alike. Per step the runner is charged everything its
loop does except evaluation and checkpointing (batch gathering, the closure, the non-finite
check, the optimizer, the clock, logging, the progress hook); the bare loop is the twenty lines
below. A third variant, "unchecked", is the runner with its per-step NaN/Inf check of the loss
and gradients replaced by a no-op: the difference is what the check costs.

    flock /tmp/sgdlab-bench.lock .venv/bin/python benchmarks/bench_harness.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sgdlab.run import finite as nonfinite
from sgdlab.run.config import TrainConfig
from sgdlab.run.train import train
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
        workload=workload.name,
        optimizer="sgd",
        lr=lr,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        eval_every=steps,
        db=tmp / "r.db",
        out=tmp / "out",
        progress=False,
    )
    result = train(config, workload=workload)
    return (result.loop_seconds - result.outside_clock_seconds) / steps


def unchecked(
    workload: Workload, steps: int, batch_size: int, lr: float, seed: int, tmp: Path
) -> float:
    """The runner without its per-step check (as it was before the check existed)."""
    real = nonfinite.FiniteGuard.check
    nonfinite.FiniteGuard.check = lambda self, loss: 0.0  # type: ignore[method-assign]
    try:
        return harness(workload, steps, batch_size, lr, seed, tmp)
    finally:
        nonfinite.FiniteGuard.check = real  # type: ignore[method-assign]


def bare(workload: Workload, steps: int, batch_size: int, lr: float, seed: int, tmp: Path) -> float:
    return bare_loop(workload, steps, batch_size, lr, seed)


def check_alone(workload: Workload, batch_size: int, repeats: int = 7) -> float:
    """Seconds one per-step check costs on its own (the loss and every gradient of one real
    batch; median of ``repeats`` timings of 200 checks): the figure the loop timings above
    resolve only up to the machine's noise."""
    model = workload.make_model(0)
    x, y = workload.batch(torch.arange(batch_size))
    loss = workload.loss(model, x, y)
    loss.backward()
    guard = nonfinite.FiniteGuard(model, torch.device("cpu"))
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(200):
            guard.check(loss)
        timings.append((time.perf_counter() - start) / 200)
    return statistics.median(timings)


def _spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="logreg-fmnist,mlp-mnist,cnn-fmnist")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps-scale", type=float, default=1.0, help="scale every step count")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: every clock of the process (the runner's too) reads this thread's CPU time, "
        "which leaves out the time other processes of a shared machine take from it",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":  # one torch thread: the thread's CPU time is the loop's compute
        time.perf_counter = time.thread_time
    steps_for = {"logreg-fmnist": 3000, "mlp-mnist": 2000, "cnn-fmnist": 300}
    print(
        f"threads={args.threads} batch={args.batch_size} repeats={args.repeats} "
        f"clock={args.clock} steps-scale={args.steps_scale}"
    )
    print(
        "| workload | steps | bare ms/step | unchecked ms/step | sgdlab ms/step "
        "| unchecked/bare median [min, max] | sgdlab/bare median [min, max] "
        "| sgdlab/unchecked median [min, max] | check alone µs (share of bare) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for name in args.workloads.split(","):
            wl = get_workload(name)
            steps = max(1, round(args.steps_scale * steps_for.get(name, 500)))
            variants = (bare, unchecked, harness)
            times: list[list[float]] = [[], [], []]
            for r in range(args.repeats):
                # Rotate the order each repeat, so no variant always runs first or last.
                order = [(r + k) % 3 for k in range(3)]
                for k in order:
                    times[k].append(variants[k](wl, steps, args.batch_size, 0.05, r, Path(d)))
            base, off, ours = times
            alone = check_alone(wl, args.batch_size)
            print(
                f"| {name} | {steps} | {1e3 * statistics.median(base):.3f} "
                f"| {1e3 * statistics.median(off):.3f} | {1e3 * statistics.median(ours):.3f} "
                f"| {_spread([o / b for o, b in zip(off, base, strict=True)])} "
                f"| {_spread([h / b for h, b in zip(ours, base, strict=True)])} "
                f"| {_spread([h / o for h, o in zip(ours, off, strict=True)])} "
                f"| {1e6 * alone:.1f} ({100 * alone / statistics.median(base):.1f} %) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
