"""The probes that check a testbed's links, and its status.

The testbed itself is :mod:`sgdlab.testbed.netns`; here are two measurements run *inside* its
namespaces:

- :func:`measure_throughput`: a plain TCP stream of N bytes from host ``a`` to host ``b``,
  timed at the receiver from its first byte to the sender's close. Through tbf at rate r
  with bucket b it cannot beat ``(8 (N - b)) / (r * 1448 / 1514)`` seconds (module doc of the
  testbed); an unshaped veth runs at several Gbit/s, so a missing shaper cannot hide.
- :func:`run_gloo_probe`: one rank per host (``ip netns exec``, ``GLOO_SOCKET_IFNAME``,
  ``MASTER_ADDR`` = host 0), each checking and timing gloo all_reduces. With two ranks gloo's
  ring sends each rank's half out and receives the reduced half back, so every link carries
  ``2 (n - 1) / n * B = B`` bytes of an all_reduce of B bytes each way, at the same time: the
  time should be near ``8 B / goodput``.

Both bound their time and size, and end every process they start, also on failure.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sgdlab.errors import ConfigError, TestbedError
from sgdlab.testbed.links import tcp_goodput
from sgdlab.testbed.netns import Testbed, existing_namespaces

if TYPE_CHECKING:
    from sgdlab.report.sections import Section, ShowcaseContext

PROBE_PORT = 5201
MAX_PROBE_BYTES = 1 << 30

_RECEIVER = """
import json, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(float(sys.argv[3]))
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(float(sys.argv[3]))
n, first = 0, None
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    if first is None:
        first = time.perf_counter()
    n += len(b)
last = time.perf_counter()
print(json.dumps({"bytes": n, "seconds": last - first if first else 0.0}), flush=True)
"""

_SENDER = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
left, chunk = int(sys.argv[3]), b"\\0" * (1 << 20)
while left > 0:
    c.sendall(chunk[:left]); left -= min(left, len(chunk))
c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
"""


def status_report(tb: Testbed) -> dict[str, Any]:
    """What the state file says, which namespaces exist, and each host's egress counters."""
    present = existing_namespaces()
    hosts = []
    for h in tb.hosts:
        row: dict[str, Any] = asdict(h) | {"present": h.namespace in present}
        if row["present"] and tb.shape.rate_bps is not None:
            row |= tb.egress_stats(h.index)
        hosts.append(row)
    return {"name": tb.name, "switch": tb.switch, "switch_present": tb.switch in present,
            "subnet": tb.subnet, "state_file": str(tb.state_file), "shape": asdict(tb.shape),
            "hosts": hosts}


def measure_throughput(tb: Testbed, src: int, dst: int, nbytes: int, *,
                       timeout_s: float = 30.0) -> dict[str, float]:
    """Send ``nbytes`` over TCP from host ``src`` to host ``dst``; goodput at the receiver.

    Returns ``bytes``, ``seconds`` and ``bps`` (payload bit/s), and ``expected_bps``, the
    TCP goodput of the set rate (:func:`~sgdlab.testbed.links.tcp_goodput`).
    """
    if src == dst:
        raise ConfigError(f"Invalid hosts: src {src} and dst {dst} must differ")
    if not 1 <= nbytes <= MAX_PROBE_BYTES:
        raise ConfigError(f"Invalid nbytes: {nbytes} (1 to {MAX_PROBE_BYTES})")
    addr = tb.host(dst).address
    procs: list[subprocess.Popen[str]] = []
    try:
        recv = tb.spawn(dst, [sys.executable, "-c", _RECEIVER, addr, str(PROBE_PORT),
                              str(timeout_s)], stdout=subprocess.PIPE, text=True)
        procs.append(recv)
        assert recv.stdout is not None
        if recv.stdout.readline().strip() != "listening":
            raise TestbedError(f"throughput probe: the receiver on host {dst} did not start")
        send = tb.spawn(src, [sys.executable, "-c", _SENDER, addr, str(PROBE_PORT), str(nbytes),
                              str(timeout_s)], stderr=subprocess.PIPE, text=True)
        procs.append(send)
        out, _ = recv.communicate(timeout=timeout_s)
        _, err = send.communicate(timeout=timeout_s)
        if recv.returncode or send.returncode:
            raise TestbedError(f"throughput probe {src}->{dst} failed: "
                               f"{(err or '').strip().splitlines()[-1:] or recv.returncode}")
    except subprocess.TimeoutExpired:
        raise TestbedError(f"throughput probe {src}->{dst}: no result in {timeout_s:g} s") from None
    finally:
        _end(procs)
    res = json.loads(out)
    rate = tb.shape.rate_bps
    return {"bytes": res["bytes"], "seconds": res["seconds"],
            "bps": 8 * res["bytes"] / res["seconds"] if res["seconds"] > 0 else float("inf"),
            "expected_bps": tcp_goodput(rate) if rate is not None else float("nan")}


def run_gloo_probe(tb: Testbed, sizes_bytes: list[int], *, repeats: int = 3,
                   hosts: int | None = None, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """One gloo rank on each of the first ``hosts`` hosts, all_reduces of ``sizes_bytes``.

    Returns each rank's :func:`~sgdlab.distributed.comm.probe_all_reduce` result. A rank that
    fails or hangs past ``timeout_s`` ends them all and raises :class:`TestbedError` with its
    last words.
    """
    n = len(tb.hosts) if hosts is None else hosts
    if not 2 <= n <= len(tb.hosts):
        raise ConfigError(f"Invalid hosts: {n} (2 to {len(tb.hosts)})")
    if not sizes_bytes or any(not 4 <= s <= MAX_PROBE_BYTES for s in sizes_bytes):
        raise ConfigError(f"Invalid sizes_bytes: {sizes_bytes} (4 to {MAX_PROBE_BYTES} each)")
    argv = [sys.executable, "-m", "sgdlab.testbed.probe", *map(str, sizes_bytes)]
    opts = tb.launch_options(n)  # what `sgdlab dist --testbed` hands its launcher
    procs = [subprocess.Popen(opts["wrap"](i, argv), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **opts["env_per_rank"][i],
                                   "SGDLAB_PROBE_REPEATS": str(repeats)})
             for i in range(n)]
    deadline = time.monotonic() + timeout_s
    results = []
    try:
        for i, p in enumerate(procs):
            try:
                out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise TestbedError(f"gloo probe: rank {i} hung for {timeout_s:g} s") from None
            if p.returncode != 0:
                last = (err.strip().splitlines() or ["no output"])[-1]
                raise TestbedError(f"gloo probe: rank {i} exited {p.returncode}: {last}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        _end(procs)
    return results


def summarize(seconds: list[float]) -> dict[str, float]:
    """Median and [min, max] of some timings.

    >>> summarize([3.0, 1.0, 2.0])
    {'median': 2.0, 'min': 1.0, 'max': 3.0}
    """
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}


def _end(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def showcase_testbed(ctx: ShowcaseContext | None) -> Section:
    """``bench quick`` section: on a 2-host testbed at 200mbit, TCP goodput and a 4 MiB gloo
    all_reduce against their references (about 10 s); as non-root, a line saying why not."""
    from sgdlab.report.sections import Section  # noqa: F811

    title = "Slow-network testbed: 2 namespaces at 200mbit (tc tbf)"
    try:
        with Testbed.up(2, "200mbit", name=f"demo{os.getpid() % 100000}") as tb:
            ref = tcp_goodput(200_000_000)
            tcp = [measure_throughput(tb, 0, 1, int(ref / 8 * 0.5))["bps"] for _ in range(3)]
            size = 4 << 20
            ranks = run_gloo_probe(tb, [size], repeats=3, timeout_s=120)
    except TestbedError as exc:
        return Section(title, text=f"skipped: {exc}")
    seconds = [max(t) for t in zip(*(r["seconds"][str(size)] for r in ranks), strict=True)]
    ar_ref = 8 * size / ref
    rows = [
        {"measure": "TCP goodput, Mbit/s", "reference": ref / 1e6,
         "median": statistics.median(tcp) / 1e6, "ratio": statistics.median(tcp) / ref},
        {"measure": "all_reduce 4 MiB, s", "reference": ar_ref,
         "median": statistics.median(seconds), "ratio": statistics.median(seconds) / ar_ref},
    ]
    ok = all(r["sum_ok"] for r in ranks)
    return Section(title, rows=rows, text=(
        "Reference: tbf's TCP goodput r*1448/1514, and 8B/goodput for a 2-rank all_reduce of "
        f"B bytes; medians of 3. all_reduce sums {'correct' if ok else 'WRONG'}."))


def _probe_main(argv: Sequence[str]) -> None:
    from sgdlab.distributed.comm import probe_all_reduce, teardown_and_exit

    out = probe_all_reduce([int(a) for a in argv if not a.startswith("--")],
                           repeats=int(os.environ.get("SGDLAB_PROBE_REPEATS", "3")))
    print(json.dumps(out), flush=True)
    teardown_and_exit(0)  # a gloo process can abort at interpreter exit (DESIGN.md)


if __name__ == "__main__":
    _probe_main(sys.argv[1:])
