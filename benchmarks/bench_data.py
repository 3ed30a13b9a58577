"""Load time of every data set available here: cold (empty cache) and cached.

Each repeat makes a fresh temporary cache folder, loads the data set once (cold: find, read,
checksum, decode, write the cache) and once more (cached: read the cache and check every
part's CRC-32). Prints a markdown table of the median and the min-max spread per data set.
"Cold" means an empty sgdlab cache, not an empty OS page cache: the source files are
usually in memory after the first repeat, so this measures decoding, not the disk.

    PYTHONPATH=src python benchmarks/bench_data.py [--repeats 5] [--only mnist digits]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sgdlab.errors import DataError
from sgdlab.workloads.datasets import dataset_names, load_dataset


def time_load(name: str, cache: Path) -> tuple[float, object]:
    start = time.perf_counter()
    ds = load_dataset(name, cache_dir=cache)
    return time.perf_counter() - start, ds


def bench(name: str, repeats: int) -> tuple[list[float], list[float], str] | str:
    cold: list[float] = []
    cached: list[float] = []
    shape = ""
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="sgdlab-bench-data-") as tmp:
            try:
                t_cold, ds = time_load(name, Path(tmp))
            except DataError as exc:
                return f"skipped: {exc}"
            t_cached, _ = time_load(name, Path(tmp))
        cold.append(t_cold)
        cached.append(t_cached)
        shape = "x".join(map(str, ds.x_train.shape))  # type: ignore[attr-defined]
    return cold, cached, shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=dataset_names(), choices=dataset_names())
    args = parser.parse_args()
    rows = [
        "| data set | x_train | cold median s | cold min-max s | cached median s "
        "| cached min-max s | cold / cached |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for name in args.only:
        result = bench(name, args.repeats)
        if isinstance(result, str):
            notes.append(f"- {name}: {result}")
            continue
        cold, cached, shape = result
        c, h = statistics.median(cold), statistics.median(cached)
        rows.append(
            f"| {name} | {shape} | {c:.3f} | {min(cold):.3f}-{max(cold):.3f} | {h:.3f} "
            f"| {min(cached):.3f}-{max(cached):.3f} | {c / h:.0f}x |"
        )
    print("\n".join(rows))
    if notes:
        print("\n" + "\n".join(notes))
    print(f"\n{args.repeats} repeats each; medians and min-max spread.")


if __name__ == "__main__":
    main()
