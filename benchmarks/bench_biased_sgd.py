"""Timing of the biased-SGD analysis, side by side in one run; prints a markdown table.

    PYTHONPATH=src python benchmarks/bench_biased_sgd.py [--repeats 15] [--steps 10000]

Rows: one LMI solve (Clarabel, SCS; the tangent at U and the least-ρ² question), the closed
form of the same question, one sequential-SDP step, a closed-form schedule of ``--steps``
steps (goal < 50 ms), and the same one-step worst case computed by PEPit (exact over finite
sums of n smooth strongly convex functions; goal: ours ≥ 10x faster). Median and spread
(25th-75th percentile) over repeats; every row is solved once untimed first (imports, caches).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from sgdlab.theory.biased_sgd import (
    BiasedSGDSetting,
    one_step_bound,
    one_step_closed_form,
    sequential_schedule,
    sequential_step,
)

M, L, SIGMA2, DELTA, C, ALPHA, U = 0.5, 1.0, 0.7, 0.1, 0.3, 0.3, 2.0


def pepit_one_step(n: int) -> float:
    """PEPit's worst ``E‖x_1 − x*‖²`` for the setting above (primal: attained by functions)."""
    from PEPit import PEP, Point
    from PEPit.functions import SmoothStronglyConvexFunction

    problem = PEP()
    fs = [problem.declare_function(SmoothStronglyConvexFunction, L=L, mu=M) for _ in range(n)]
    xs = np.mean(fs).stationary_point()
    x0 = problem.set_initial_point()
    problem.add_constraint(np.mean([f.gradient(xs) ** 2 for f in fs]) <= SIGMA2)
    problem.set_initial_condition((x0 - xs) ** 2 <= U)
    terms = []
    for f in fs:
        g = f.gradient(x0)
        e = Point()
        problem.add_constraint(e**2 <= DELTA**2 * g**2 + C**2)
        terms.append((x0 - ALPHA * (g + e) - xs) ** 2)
    problem.set_performance_metric(np.mean(terms))
    return float(
        problem.solve(wrapper="cvxpy", solver="CLARABEL", verbose=0, return_primal_or_dual="primal")
    )


def timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10_000)
    args = parser.parse_args()
    smooth = BiasedSGDSetting("smooth", M, L, DELTA, C, SIGMA2)
    convex = BiasedSGDSetting("smooth-convex", M, L, DELTA, C, SIGMA2)
    r, rp = args.repeats, max(3, args.repeats // 3)

    rows: list[tuple[str, list[float], str]] = []

    def row(name: str, fn: Callable[[], object], repeats: int, note: Callable[[object], str]):
        times, out = timed(fn, repeats)
        rows.append((name, times, note(out)))

    def bound(b: object) -> str:
        assert hasattr(b, "value")
        return f"bound {b.value(U):.6f}"

    row(
        "LMI one step, tangent at U (Clarabel)",
        lambda: one_step_bound(smooth, ALPHA, U=U),
        r,
        bound,
    )
    row(
        "LMI one step, tangent at U (SCS)",
        lambda: one_step_bound(smooth, ALPHA, U=U, solver="scs"),
        r,
        bound,
    )
    row("LMI least rho2 + its H (Clarabel)", lambda: one_step_bound(smooth, ALPHA), r, lambda b: "")
    row(
        "LMI one step, smooth-convex biased (Clarabel)",
        lambda: one_step_bound(convex, ALPHA, U=U),
        r,
        bound,
    )
    row("closed form, tangent at U", lambda: one_step_closed_form(smooth, ALPHA, U=U), r, bound)
    row(
        "sequential SDP step (alpha a variable)",
        lambda: sequential_step(smooth, U),
        r,
        lambda out: f"U+ {out[1]:.6f}",  # type: ignore[index]
    )
    row(
        f"closed-form schedule, {args.steps} steps",
        lambda: sequential_schedule(smooth, U, args.steps),
        r,
        lambda s: f"U_end {s.bounds[-1]:.6f}",  # type: ignore[attr-defined]
    )
    for n in (2, 5):
        row(
            f"PEPit one step, n={n} functions",
            lambda n=n: pepit_one_step(n),
            rp,
            lambda v: f"worst {v:.6f}",
        )

    med = {name: statistics.median(t) for name, t, _ in rows}
    print(f"setting: smooth, m={M}, L={L}, sigma2={SIGMA2}, delta={DELTA}, c={C}, ", end="")
    print(f"alpha={ALPHA}, U={U}\n")
    print("| what | median | p25-p75 | repeats | result |")
    print("|---|---:|---:|---:|---|")
    for name, times, note in rows:
        q = np.percentile(times, [25, 75])
        print(f"| {name} | {_ms(med[name])} | {_ms(q[0])}-{_ms(q[1])} | {len(times)} | {note} |")
    lmi = med["LMI one step, tangent at U (Clarabel)"]
    closed = med["closed form, tangent at U"]
    for n in (2, 5):
        pep = med[f"PEPit one step, n={n} functions"]
        print(f"\nPEPit n={n} / LMI (Clarabel): {pep / lmi:.1f}x; ", end="")
        print(f"PEPit n={n} / closed form: {pep / closed:.0f}x")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1e-2 else f"{seconds * 1e3:.1f} ms"


if __name__ == "__main__":
    main()
