"""mL-BFGS beside momentum SGD and Adam: cost per step, and loss after a fixed number of steps.

Two measurements in one run, each repeated, reported as median and spread (min-max):

* **cost**: wall time of ``opt.step()`` alone and of a whole iteration (forward, backward,
  step) on a small MLP over in-memory synthetic data, one thread;
* **loss**: full-data loss after a fixed number of mini-batch steps on a small, badly scaled
  logistic regression, minus the optimum of the same problem (full-batch L-BFGS with a
  strong-Wolfe line search); one seed per repeat (data and initialisation both change).

Run:  PYTHONPATH=src python benchmarks/bench_mlbfgs_step.py [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

from sgdlab.optim.mlbfgs import MLBFGS

OptimizerMaker = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerMaker] = {
    "sgd(lr=0.1,m=0.9)": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam(lr=1e-3)": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adam(lr=1e-2)": lambda p: torch.optim.Adam(p, lr=1e-2),
    "mlbfgs(defaults)": lambda p: MLBFGS(p),
    "mlbfgs(size:1e5)": lambda p: MLBFGS(p, blocks="size:100000"),
}


@dataclass
class Row:
    optimizer: str
    step_ms: tuple[float, float, float]  # median, min, max over repeats
    iteration_ms: tuple[float, float, float]
    excess_loss: tuple[float, float, float]


def spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def time_steps(make: OptimizerMaker, steps: int, seed: int) -> tuple[float, float]:
    """Mean milliseconds of ``step()`` and of a whole iteration, on a 784-256-128-10 MLP."""
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(4096, 784, generator=g), torch.randint(0, 10, (4096,), generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    opt = make(model.parameters())
    step_s = total_s = 0.0
    for i in range(steps + 10):  # ten warm-up iterations are not timed
        idx = torch.randint(0, 4096, (128,), generator=g)
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), t[idx]).backward()
        mid = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        if i >= 10:
            step_s += end - mid
            total_s += end - start
    return 1e3 * step_s / steps, 1e3 * total_s / steps


def logistic_problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """2048 samples, 50 features scaled from 0.1 to 3.2 (condition number ~1000)."""
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(2048, 50, generator=g) * torch.logspace(-1, 0.5, 50)
    w = torch.randn(50, generator=g)
    y = (torch.sigmoid(x @ w) > torch.rand(2048, generator=g)).float()
    return x, y, g


def final_loss(make: OptimizerMaker | None, steps: int, seed: int) -> float:
    """Full-data logistic loss after ``steps`` mini-batch steps (batch 32); with ``make=None``
    the optimum instead, by full-batch L-BFGS with a strong-Wolfe line search."""
    x, y, g = logistic_problem(seed)
    torch.manual_seed(seed)
    model = torch.nn.Linear(50, 1)

    def loss_of(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(model(xb).squeeze(1), yb)

    if make is None:
        lbfgs = torch.optim.LBFGS(model.parameters(), max_iter=500, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            lbfgs.zero_grad()
            loss = loss_of(x, y)
            loss.backward()
            return loss

        lbfgs.step(closure)
    else:
        opt = make(model.parameters())
        for _ in range(steps):
            idx = torch.randint(0, 2048, (32,), generator=g)
            opt.zero_grad()
            loss_of(x[idx], y[idx]).backward()
            opt.step()
    with torch.no_grad():
        return float(loss_of(x, y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--time-steps", type=int, default=100)
    parser.add_argument("--loss-steps", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optimum = [final_loss(None, 0, seed) for seed in range(args.repeats)]
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in OPTIMIZERS}
    losses: dict[str, list[float]] = {name: [] for name in OPTIMIZERS}
    for seed in range(args.repeats):  # optimizers interleaved: a busy machine hits all alike
        for name, make in OPTIMIZERS.items():
            timings[name].append(time_steps(make, args.time_steps, seed))
            excess = final_loss(make, args.loss_steps, seed) - optimum[seed]
            losses[name].append(excess)
    rows = [
        Row(
            name,
            spread([s for s, _ in timings[name]]),
            spread([i for _, i in timings[name]]),
            spread(losses[name]),
        )
        for name in OPTIMIZERS
    ]
    print(
        f"torch {torch.__version__}, 1 thread, {args.repeats} repeats; "
        f"cost: MLP 784-256-128-10, batch 128, {args.time_steps} steps; "
        f"loss: logistic regression d=50, batch 32, {args.loss_steps} steps"
    )
    print(f"{'optimizer':<20} {'step ms':>22} {'iteration ms':>22} {'loss - optimum':>26}")
    for r in rows:
        print(
            f"{r.optimizer:<20} "
            f"{r.step_ms[0]:7.3f} [{r.step_ms[1]:5.3f}-{r.step_ms[2]:5.3f}] "
            f"{r.iteration_ms[0]:7.3f} [{r.iteration_ms[1]:5.3f}-{r.iteration_ms[2]:5.3f}] "
            f"{r.excess_loss[0]:8.4f} [{r.excess_loss[1]:.4f}-{r.excess_loss[2]:.4f}]"
        )
    best = spread(optimum)
    print(f"optimum (full-batch L-BFGS): {best[0]:.4f} [{best[1]:.4f}-{best[2]:.4f}]")
    if args.json:
        rows_json = [asdict(r) for r in rows]
        print(json.dumps({"rows": rows_json, "optimum": optimum, "args": vars(args)}))


if __name__ == "__main__":
    main()
