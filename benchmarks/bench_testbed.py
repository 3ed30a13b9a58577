"""Does the testbed's rate hold? TCP goodput vs set rate, and gloo all_reduce time vs bytes/rate.

Part 1: one testbed of 2 hosts per rate, all up at once; the rates alternate, ``--repeats``
times each, a TCP stream of about ``--seconds`` of data from host 0 to host 1. The reference
is tbf's TCP goodput ``r * 1448 / 1514`` (frames of 1514 bytes carry 1448 payload bytes).

Part 2: 2 hosts at ``--allreduce-rate``; one gloo rank per host (``ip netns exec``,
``GLOO_SOCKET_IFNAME``); all_reduces of each size interleaved, ``--repeats`` times after one
untimed round. With 2 ranks every link carries B bytes each way (bench.testbed module doc), so
the reference is ``8 B / goodput``; the same sizes on an unshaped testbed show gloo's own cost.

Root only. Timed runs on a shared machine go under the bench lock:

    flock /tmp/sgdlab-bench.lock .venv/bin/python benchmarks/bench_testbed.py --repeats 7
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from sgdlab.testbed import Testbed, parse_rate, tcp_goodput, teardown
from sgdlab.testbed.probe import measure_throughput, run_gloo_probe, summarize


def _fmt(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    s = summarize([v * scale for v in values])
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def throughput(rates: list[str], repeats: int, seconds: float) -> None:
    print("| set rate | goodput ref (Mbit/s) | bytes | measured Mbit/s median [min, max] "
          "| measured / ref |")
    print("|---|---|---|---|---|")
    with contextlib.ExitStack() as stack:  # each testbed comes down on exit, error or signal
        beds = {rate: stack.enter_context(Testbed.up(2, rate, name=f"bench{i}"))
                for i, rate in enumerate(rates)}
        measured: dict[str, list[float]] = {r: [] for r in rates}
        for _ in range(repeats):
            for rate in rates:  # interleaved: noise hits every rate alike
                nbytes = int(tcp_goodput(parse_rate(rate) or 0) / 8 * seconds)
                measured[rate].append(measure_throughput(beds[rate], 0, 1, nbytes)["bps"])
        for rate in rates:
            ref = tcp_goodput(parse_rate(rate) or 0)
            nbytes = int(ref / 8 * seconds)
            print(f"| {rate} | {ref / 1e6:.1f} | {nbytes / 2**20:.1f} MiB "
                  f"| {_fmt(measured[rate], 1e-6, 1)} | {_fmt(measured[rate], 1 / ref)} |")


def allreduce(rate: str, sizes_mib: list[int], repeats: int) -> None:
    sizes = [m << 20 for m in sizes_mib]
    ref_bps = tcp_goodput(parse_rate(rate) or 0)
    print(f"\n| all_reduce (2 hosts, float32) | {rate}: seconds median [min, max] "
          "| 8B/goodput (s) | measured / ref | unshaped: seconds median [min, max] |")
    print("|---|---|---|---|---|")
    results = {}
    for key, r in ((rate, rate), ("none", None)):
        with Testbed.up(2, r, name="benchar") as tb:
            ranks = run_gloo_probe(tb, sizes, repeats=repeats, timeout_s=300)
            assert all(x["sum_ok"] for x in ranks), "all_reduce gave a wrong sum"
            # A collective ends when its slowest rank does.
            results[key] = {s: [max(t) for t in zip(*(x["seconds"][str(s)] for x in ranks),
                                                     strict=True)] for s in sizes}
    for s in sizes:
        ref = 8 * s / ref_bps
        print(f"| {s >> 20} MiB | {_fmt(results[rate][s])} | {ref:.3f} "
              f"| {_fmt(results[rate][s], 1 / ref)} | {_fmt(results['none'][s], 1, 4)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="50mbit,200mbit,1000mbit")
    ap.add_argument("--seconds", type=float, default=1.0, help="Length of each TCP transfer.")
    ap.add_argument("--allreduce-rate", default="200mbit")
    ap.add_argument("--sizes-mib", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_testbed needs root (network namespaces and tc)")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"repeats={args.repeats}")
    for name in ("bench0", "bench1", "bench2", "benchar"):  # leftovers of an interrupted run
        teardown(name)
    throughput(args.rates.split(","), args.repeats, args.seconds)
    allreduce(args.allreduce_rate, [int(m) for m in args.sizes_mib.split(",")], args.repeats)
    print(f"\nload after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"python {sys.version.split()[0]}; statistics over {args.repeats} repeats")


if __name__ == "__main__":
    main()
