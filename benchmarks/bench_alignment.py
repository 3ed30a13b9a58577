"""Which reductions round differently for a tensor at another memory alignment, on this CPU.

Why mL-BFGS sends each block's norm with its direction instead of letting every rank take it
(``sgdlab.optim.mlbfgs``, "Sharding"): the blocks a rank receives are slices of an all-gather
buffer, at offsets no allocation would have. For each reduction, this compares its value on a
fresh tensor with its value on the same numbers copied to 1..8 elements into a buffer, over
several lengths and both float dtypes, and times it at 2M float32 elements (one thread)::

    .venv/bin/python benchmarks/bench_alignment.py --out benchmarks/results/alignment.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

Reduction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
REDUCTIONS: dict[str, Reduction] = {
    "torch.dot (BLAS)": torch.dot,
    "torch.inner (BLAS)": torch.inner,
    "torch.linalg.vecdot": torch.linalg.vecdot,
    "(a * b).sum() (ATen)": lambda a, b: (a * b).sum(),
    "torch.linalg.vector_norm(a) (ATen)": lambda a, b: torch.linalg.vector_norm(a),
}
LENGTHS = (7, 18, 35, 42, 100, 1000, 4097)
OFFSETS = range(1, 9)


def differing(f: Reduction) -> tuple[int, int]:
    """How many (length, dtype, offset) cases give another value than the fresh tensor."""
    torch.manual_seed(0)
    differ = total = 0
    for n in LENGTHS:
        for dtype in (torch.float64, torch.float32):
            a, b = torch.randn(n, dtype=dtype), torch.randn(n, dtype=dtype)
            for off in OFFSETS:
                wa, wb = torch.zeros(n + off, dtype=dtype), torch.zeros(n + off, dtype=dtype)
                wa[off:], wb[off:] = a, b
                total += 1
                differ += int(f(wa[off:], wb[off:]).item() != f(a, b).item())
    return differ, total


def milliseconds(f: Reduction, repeats: int) -> list[float]:
    a, b = torch.randn(2_000_000), torch.randn(2_000_000)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(20):
            f(a, b)
        times.append(1e3 * (time.perf_counter() - start) / 20)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the markdown here (else stdout)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = ["| reduction | values that differ at another alignment | ms at 2M float32, "
            "median [min, max] |", "|---|---|---|"]
    for name, f in REDUCTIONS.items():
        differ, total = differing(f)
        ms = milliseconds(f, args.repeats)
        rows.append(f"| {name} | {differ} of {total} | "
                    f"{statistics.median(ms):.3f} [{min(ms):.3f}, {max(ms):.3f}] |")
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = "\n".join([
        "# Reductions at another memory alignment",
        "",
        "Command: `.venv/bin/python benchmarks/bench_alignment.py --out "
        "benchmarks/results/alignment.md`",
        "",
        f"CPU: {cpu}; torch {torch.__version__}, one thread. Lengths {list(LENGTHS)}, float32 "
        f"and float64, offsets {OFFSETS.start}..{OFFSETS.stop - 1} elements into a buffer.",
        "",
        *rows,
        "",
    ])
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
