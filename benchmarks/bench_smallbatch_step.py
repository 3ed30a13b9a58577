"""Per-step cost of prox-SGD/prox-Adam in the runner's loop, ``opt.step(closure)``, small batches.

The runner (and so ``sgdlab bench smallbatch``) hands every optimizer a closure. Proximal used
to push it through the inner optimizer wrapped in a proximal closure that also computed the
penalty lambda*||theta - anchor||^2 (a pass over the parameters and a sync) on a loss that SGD
and Adam never read. It now evaluates the closure itself for torch's first-order optimizers. The
``(penalty path)`` rows force the old path on the same math (an SGD/Adam subclass, which
Proximal does not trust to evaluate once), so old and new are measured in one interleaved run.

Model: mlp-mnist's MLP 784-256-128-10 on synthetic data fixed in memory; one step is
``opt.step(closure)`` with ``closure = zero_grad; forward; loss; backward``. Variants rotate
within each repeat; reported: median seconds per step, and the median over repeats of the ratio
to the bare optimizer in the same repeat, with its [min, max].

    PYTHONPATH=src python benchmarks/bench_smallbatch_step.py --repeats 15 --steps 100
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from sgdlab.optim.proximal import Proximal
from sgdlab.workloads.models import MLP


class _SGD(torch.optim.SGD):
    """Plain SGD that Proximal does not recognise: it takes the penalty path."""


class _Adam(torch.optim.Adam):
    """Plain Adam that Proximal does not recognise: it takes the penalty path."""


Factory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def variants(lam: float, window: int) -> dict[str, tuple[str, Factory]]:
    """name -> (bare baseline name, factory)."""

    def prox(inner: Factory) -> Factory:
        return lambda p: Proximal(inner(p), lam=lam, window=window)

    def sgd(p: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(p, lr=0.01, momentum=0.9)

    def sgd_sub(p: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return _SGD(p, lr=0.01, momentum=0.9)

    def adam(p: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(p, lr=1e-3)

    def adam_sub(p: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return _Adam(p, lr=1e-3)

    return {
        "sgd": ("sgd", sgd),
        "prox-sgd": ("sgd", prox(sgd)),
        "prox-sgd (penalty path)": ("sgd", prox(sgd_sub)),
        "adam": ("adam", adam),
        "prox-adam": ("adam", prox(adam)),
        "prox-adam (penalty path)": ("adam", prox(adam_sub)),
    }


class _Run:
    def __init__(self, factory: Factory, batch: int) -> None:
        torch.manual_seed(0)
        self.model = MLP(784, (256, 128), 10)
        self.opt = factory(list(self.model.parameters()))
        gen = torch.Generator().manual_seed(0)
        self.data = [
            (
                torch.randn(batch, 1, 28, 28, generator=gen),
                torch.randint(0, 10, (batch,), generator=gen),
            )
            for _ in range(32)
        ]
        self.cursor = 0

    def steps(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            x, y = self.data[self.cursor % len(self.data)]
            self.cursor += 1

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                self.opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(self.model(x), y)
                loss.backward()
                return loss

            self.opt.step(closure)  # type: ignore[arg-type]
        return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batches", default="8,16")
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--window", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for batch in (int(b) for b in args.batches.split(",")):
        table = variants(args.lam, args.window)
        runs = {name: _Run(factory, batch) for name, (_, factory) in table.items()}
        for run in runs.values():
            run.steps(args.warmup)
        names = list(table)
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(runs[name].steps(args.steps))
        print(
            f"MLP 784-256-128-10, batch {batch}, 1 thread, lam={args.lam}, window={args.window};"
            f" {args.repeats} repeats x {args.steps} steps, interleaved, step(closure)"
        )
        print(f"{'variant':<26}{'us/step':>9}{'vs bare':>9}{'range':>13}")
        for name in names:
            ratios = [t / b for t, b in zip(times[name], times[table[name][0]], strict=True)]
            print(
                f"{name:<26}{1e6 * statistics.median(times[name]):>9.0f}"
                f"{statistics.median(ratios):>8.3f}x{f'{min(ratios):.2f}-{max(ratios):.2f}':>13}"
            )


if __name__ == "__main__":
    main()
