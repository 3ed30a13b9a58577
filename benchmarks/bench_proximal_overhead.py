"""Per-step cost of the proximal wrapper against the bare optimizer it wraps.

A 784-256-10 MLP, batch 16 (``--batch``), synthetic data fixed in memory; one training step is
``zero_grad; forward; loss; backward; step``. Every variant runs ``--steps`` steps per repeat,
the variants interleaved in a rotating order within each repeat so drift in the machine's load
hits all of them alike. Reported: the median per-step time over repeats with its interquartile
range, the median time inside ``step()`` alone, and the median over repeats of the ratio to the
bare optimizer measured in the same repeat (goal: <= 1.1x for the whole training step). The
``foreach`` rows force the multi-tensor kernels that the CPU default (``foreach=None``) skips.

    PYTHONPATH=src python benchmarks/bench_proximal_overhead.py --repeats 15 --steps 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sgdlab.optim.proximal import Proximal

Variant = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def _variants(lam: float, window: int) -> dict[str, tuple[str, Variant]]:
    """name -> (bare baseline name, factory)."""

    def sgd(p: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(p, lr=0.05, momentum=0.9)

    def adam(p: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(p, lr=1e-3)

    def prox(inner: Variant, **kw: Any) -> Variant:
        return lambda p: Proximal(inner(p), lam=lam, window=window, **kw)

    return {
        "sgd": ("sgd", sgd),
        "prox-sgd": ("sgd", prox(sgd)),
        "prox-sgd foreach": ("sgd", prox(sgd, foreach=True)),
        "prox-sgd decoupled": ("sgd", prox(sgd, coupled=False)),
        "adam": ("adam", adam),
        "prox-adam": ("adam", prox(adam)),
        "prox-adam foreach": ("adam", prox(adam, foreach=True)),
        "prox-adam decoupled": ("adam", prox(adam, coupled=False)),
    }


@dataclass(frozen=True)
class Row:
    variant: str
    step_us: float  # median over repeats of the mean training-step time
    iqr_us: tuple[float, float]
    optimizer_step_us: float  # median time inside step()
    ratio: float  # median over repeats of step time / bare step time in the same repeat
    ratio_range: tuple[float, float]


class _Run:
    """One model and optimizer, kept across repeats so every repeat measures warm steps."""

    def __init__(self, factory: Variant, data: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        # Same seed for every variant: identical initial weights and data order.
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
        )
        self.opt = factory(list(self.model.parameters()))
        self.data = data
        self.cursor = 0

    def steps(self, n: int) -> tuple[float, float]:
        """Run n steps; return (seconds per training step, seconds per step() call)."""
        in_step = 0.0
        start = time.perf_counter()
        for _ in range(n):
            x, y = self.data[self.cursor % len(self.data)]
            self.cursor += 1
            self.opt.zero_grad()
            torch.nn.functional.cross_entropy(self.model(x), y).backward()
            t0 = time.perf_counter()
            self.opt.step()
            in_step += time.perf_counter() - t0
        return (time.perf_counter() - start) / n, in_step / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=100, help="steps per variant per repeat")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lam", type=float, default=0.01)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    data = [
        (
            torch.randn(args.batch, 784, generator=gen),
            torch.randint(0, 10, (args.batch,), generator=gen),
        )
        for _ in range(64)
    ]
    variants = _variants(args.lam, args.window)
    runs = {name: _Run(factory, data) for name, (_, factory) in variants.items()}
    for run in runs.values():
        run.steps(args.warmup)

    names = list(variants)
    total: dict[str, list[float]] = {name: [] for name in names}
    step_only: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            per_step, in_step = runs[name].steps(args.steps)
            total[name].append(per_step)
            step_only[name].append(in_step)

    rows: list[Row] = []
    for name in names:
        base = variants[name][0]
        ratios = [t / b for t, b in zip(total[name], total[base], strict=True)]
        q1, _, q3 = statistics.quantiles(total[name], n=4)
        rows.append(
            Row(
                variant=name,
                step_us=1e6 * statistics.median(total[name]),
                iqr_us=(1e6 * q1, 1e6 * q3),
                optimizer_step_us=1e6 * statistics.median(step_only[name]),
                ratio=statistics.median(ratios),
                ratio_range=(min(ratios), max(ratios)),
            )
        )

    print(
        f"MLP 784-256-10, batch {args.batch}, {args.threads} thread(s), lam={args.lam}, "
        f"window={args.window}; {args.repeats} repeats x {args.steps} steps, interleaved"
    )
    header = f"{'variant':<22}{'step (us)':>11}{'IQR (us)':>17}{'in step() (us)':>16}"
    print(header + f"{'vs bare':>9}{'range':>15}")
    for row in rows:
        lo, hi = row.iqr_us
        rlo, rhi = row.ratio_range
        print(
            f"{row.variant:<22}{row.step_us:>11.1f}{f'{lo:.0f}-{hi:.0f}':>17}"
            f"{row.optimizer_step_us:>16.1f}{row.ratio:>8.3f}x{f'{rlo:.2f}-{rhi:.2f}':>15}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": [asdict(r) for r in rows]}, f, indent=2)


if __name__ == "__main__":
    main()
