"""Per-step cost of the proximal wrapper against the bare optimizer it wraps.

A 784-256-10 MLP, batch 16 (``--batch``), synthetic data fixed in memory; one training step is
``zero_grad; forward; loss; backward; step``. Every variant runs ``--steps`` steps per repeat,
the variants interleaved in a rotating order within each repeat so drift in the machine's load
hits all of them alike. Reported: the median per-step time over repeats with its interquartile
range, the median time inside ``step()`` alone, and the median over repeats of the ratio to the
bare optimizer measured in the same repeat (goal: <= 1.1x for the whole training step). The
``foreach`` rows force the multi-tensor kernels that the CPU default (``foreach=None``) skips;
the ``wd`` rows give every optimizer weight decay 1e-4 (the authors' protocol), into which the
wrapper folds its term (one pass instead of two; ``2-pass``: the same without the fold;
``lam=0``: the wrapper's bookkeeping and in-window lr scaling without the term); the
``fused`` rows use torch's fused CPU kernels (``fused=True``) for the inner optimizer and for
the baseline alike (one kernel reads g, p and the state and writes p and the state).

``--params N`` times ``step()`` alone on N parameters (four tensors), SGD-momentum and Adam
with weight decay beside their prox variants, and a ``copy_`` of the same tensors: the bytes
each step moves at copy bandwidth against the time it takes.

    PYTHONPATH=src python benchmarks/bench_proximal_overhead.py --repeats 15 --steps 100
    PYTHONPATH=src python benchmarks/bench_proximal_overhead.py --params 2000000 --repeats 15
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

    def sgd(p: list[torch.nn.Parameter], wd: float = 0.0) -> torch.optim.Optimizer:
        return torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=wd)

    def adam(p: list[torch.nn.Parameter], wd: float = 0.0) -> torch.optim.Optimizer:
        return torch.optim.Adam(p, lr=1e-3, weight_decay=wd)

    def sgd_wd(p: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return sgd(p, 1e-4)

    def sgd_wd_unfolded(p: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return _Unfolded(p, lr=0.05, momentum=0.9, weight_decay=1e-4)

    def adam_wd(p: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return adam(p, 1e-4)

    def sgd_wd_fused(p: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4, fused=True)

    def adam_wd_fused(p: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4, fused=True)

    def prox(inner: Variant, **kw: Any) -> Variant:
        return lambda p: Proximal(inner(p), **{"lam": lam, "window": window, **kw})

    return {
        "sgd": ("sgd", sgd),
        "prox-sgd": ("sgd", prox(sgd)),
        "prox-sgd foreach": ("sgd", prox(sgd, foreach=True)),
        "prox-sgd decoupled": ("sgd", prox(sgd, coupled=False)),
        "adam": ("adam", adam),
        "prox-adam": ("adam", prox(adam)),
        "prox-adam foreach": ("adam", prox(adam, foreach=True)),
        "prox-adam decoupled": ("adam", prox(adam, coupled=False)),
        "sgd wd": ("sgd wd", sgd_wd),
        "prox-sgd wd": ("sgd wd", prox(sgd_wd)),
        "prox-sgd wd lam=0": ("sgd wd", prox(sgd_wd, lam=0.0)),
        "prox-sgd wd 2-pass": ("sgd wd", prox(sgd_wd_unfolded)),
        "adam wd": ("adam wd", adam_wd),
        "prox-adam wd": ("adam wd", prox(adam_wd)),
        "sgd wd fused": ("sgd wd fused", sgd_wd_fused),
        "prox-sgd wd fused": ("sgd wd fused", prox(sgd_wd_fused)),
        "adam wd fused": ("adam wd fused", adam_wd_fused),
        "prox-adam wd fused": ("adam wd fused", prox(adam_wd_fused)),
    }


class _Unfolded(torch.optim.SGD):
    """SGD under another name: the wrapper then adds its term in two passes, as before it
    learned to fold the term into SGD's weight decay (the fold's gain, side by side)."""


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


def step_alone(n_params: int, variants: dict[str, tuple[str, Variant]], repeats: int,
              steps: int) -> None:
    """``step()`` alone on ``n_params`` parameters in four tensors, interleaved, beside a
    ``copy_`` of them: median us per step, IQR, ratio to the bare optimizer, and the step's
    time at copy bandwidth (GB/s of a copy: 2 x 4 bytes x n read and written)."""
    sizes = [n_params // 2, n_params // 4, n_params // 8, n_params - 7 * (n_params // 8)]
    names = [n for n in variants if " wd" in n or n in ("sgd", "prox-sgd", "adam", "prox-adam")]
    opts = {}
    for name in names:
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(k, generator=gen)) for k in sizes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        opts[name] = variants[name][1](params)
        for _ in range(12):  # past the first window: the term is on at k > 0
            opts[name].step()
    src = [torch.randn(k) for k in sizes]
    dst = [torch.empty(k) for k in sizes]
    times: dict[str, list[float]] = {name: [] for name in [*names, "copy"]}
    for r in range(repeats):
        order = [*names, "copy"]
        order = order[r % len(order):] + order[: r % len(order)]
        for name in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                if name == "copy":
                    for d, s_ in zip(dst, src, strict=True):
                        d.copy_(s_)
                else:
                    opts[name].step()
            times[name].append((time.perf_counter() - t0) / steps)
    copy = statistics.median(times["copy"])
    gbps = 8 * n_params / copy / 1e9
    print(f"step() alone, {n_params} float32 parameters in 4 tensors, {repeats} repeats x "
          f"{steps} steps, interleaved; copy_ of the same: {1e6 * copy:.0f} us = {gbps:.1f} GB/s")
    print(f"{'variant':<20}{'step (us)':>11}{'IQR (us)':>17}{'vs bare':>9}{'range':>13}"
          f"{'copies':>8}")
    for name in names:
        base = variants[name][0]
        ratios = [t / b for t, b in zip(times[name], times[base], strict=True)]
        q1, _, q3 = statistics.quantiles(times[name], n=4)
        med = statistics.median(times[name])
        print(f"{name:<20}{1e6 * med:>11.0f}{f'{1e6 * q1:.0f}-{1e6 * q3:.0f}':>17}"
              f"{statistics.median(ratios):>8.3f}x{f'{min(ratios):.2f}-{max(ratios):.2f}':>13}"
              f"{med / copy:>8.2f}")


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
    parser.add_argument("--params", type=int, default=0,
                        help="time step() alone on this many parameters (0: the MLP steps)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.params:
        step_alone(args.params, _variants(args.lam, args.window), args.repeats, args.steps)
        return

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
