"""Every convex workload's optimum w* from cold: trust-region Newton against the old L-BFGS.

Per workload the data are loaded once (their own cold load is bench_data.py's subject); then,
`--repeats` times, `cached_optimum` with an empty temporary cache folder: the solve, in float64
to ‖∇F‖ ≤ 1e-9, plus writing the `.npz`; and a second call that reads it back. The old path,
`compute_optimum_lbfgs` (full-batch L-BFGS, strong Wolfe, 1e-9), runs in the same process:
once with a time cap of `--old-cap` seconds (a capped run reports how far it got), and
`--repeats` times where one run takes under 10 s. Each new w* is checked again with the
workload's own torch loss and autograd, and compared with the old one.

    flock /tmp/sgdlab-bench.lock .venv/bin/python benchmarks/bench_optimum.py \\
        --repeats 3 --old-cap 120 --out benchmarks/results/optimum.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from sgdlab.workloads import Workload, _newton, get_workload, workload_names, workload_spec
from sgdlab.workloads.base import SparseRows
from sgdlab.workloads.convex import (
    Optimum,
    autograd_check,
    cached_optimum,
    compute_optimum_lbfgs,
)


@contextmanager
def recording_newton() -> Iterator[list[Any]]:
    """The NewtonResult of every solve inside the block (for its Hessian-product count)."""
    seen: list[Any] = []
    original: Callable[..., Any] = _newton.newton_minimize

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        seen.append(original(*args, **kwargs))
        return seen[-1]

    _newton.newton_minimize = wrapper  # type: ignore[assignment]
    try:
        yield seen
    finally:
        _newton.newton_minimize = original  # type: ignore[assignment]


def shape(w: Workload) -> str:
    d = w.x_train.shape[1] if isinstance(w.x_train, SparseRows) else w.x_train[0].numel()
    kind = "sparse" if isinstance(w.x_train, SparseRows) else "dense"
    return f"{w.num_train}×{d} {kind}, {w.num_classes} classes, λ={w.l2:g}"


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def bench(name: str, repeats: int, old_cap: float) -> dict[str, Any]:
    start = time.perf_counter()
    w = get_workload(name)
    row: dict[str, Any] = {"name": name, "shape": shape(w), "load": time.perf_counter() - start}
    cold, cached = [], []
    opt: Optimum | None = None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="sgdlab-bench-optimum-") as tmp:
            with recording_newton() as seen:
                t0 = time.perf_counter()
                opt = cached_optimum(w, cache_dir=Path(tmp))
                t1 = time.perf_counter()
                again = cached_optimum(w, cache_dir=Path(tmp))
                t2 = time.perf_counter()
            assert np.array_equal(again.flat(), opt.flat()) and len(seen) == 1
        cold.append(t1 - t0)
        cached.append(t2 - t1)
    assert opt is not None
    row["new"] = {
        "seconds": cold,
        "cached": cached,
        "iterations": opt.iterations,
        "hessp": seen[0].hessian_products,
        "gradients": seen[0].gradients,
        "grad_norm": opt.grad_norm,
        "loss": opt.loss,
    }
    row["autograd_loss"], row["autograd_grad_norm"] = autograd_check(w, opt)
    old_seconds: list[float] = []
    old: Optimum | None = None
    while len(old_seconds) < (repeats if not old_seconds or old_seconds[0] < 10 else 1):
        t0 = time.perf_counter()
        old = compute_optimum_lbfgs(w, time_limit=old_cap)
        old_seconds.append(time.perf_counter() - t0)
    assert old is not None
    row["old"] = {
        "seconds": old_seconds,
        "capped": old.grad_norm > 1e-9 and old_seconds[-1] >= old_cap,
        "iterations": old.iterations,
        "grad_norm": old.grad_norm,
        "loss": old.loss,
    }
    row["distance"] = float(np.linalg.norm(opt.flat() - old.flat()) / np.linalg.norm(opt.flat()))
    return row


def table(rows: list[dict[str, Any]], old_cap: float) -> str:
    lines = [
        "| workload | solver | cold s, median [min, max] | cached read s | iterations "
        "| Hessian-vector products | ‖∇F(w*)‖ | F(w*) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        new, old = r["new"], r["old"]
        lines.append(
            f"| {r['name']} | trust-region Newton | {spread(new['seconds'])} "
            f"| {statistics.median(new['cached']):.3f} | {new['iterations']} | {new['hessp']} "
            f"| {new['grad_norm']:.1e} (autograd {r['autograd_grad_norm']:.1e}) "
            f"| {new['loss']:.15f} |"
        )
        seconds = f"> {old_cap:.0f} (stopped)" if old["capped"] else spread(old["seconds"])
        lines.append(
            f"| {r['name']} | L-BFGS (old) | {seconds} | | {old['iterations']} | – "
            f"| {old['grad_norm']:.1e}{'' if old['grad_norm'] <= 1e-9 else ' (> 1e-9)'} "
            f"| {old['loss']:.15f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    convex_names = [n for n in workload_names() if workload_spec(n).convex]
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--old-cap", type=float, default=120.0, help="seconds per L-BFGS run")
    parser.add_argument("--only", nargs="*", default=convex_names, choices=convex_names)
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = [bench(name, args.repeats, args.old_cap) for name in args.only]
    load_after = os.getloadavg()[0]
    notes = [
        f"- {r['name']}: {r['shape']}; data load {r['load']:.1f} s (not in the times); "
        f"new: {r['new']['gradients']} gradients; "
        f"‖w*_new − w*_old‖ / ‖w*_new‖ = {r['distance']:.1e}; "
        f"F_new − F_old = {r['new']['loss'] - r['old']['loss']:.1e}"
        for r in rows
    ]
    text = "\n".join(
        [
            table(rows, args.old_cap),
            "",
            *notes,
            "",
            f"{args.repeats} repeats of the new path; load average {load_before:.1f} before, "
            f"{load_after:.1f} after, on {os.cpu_count()} cores.",
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
