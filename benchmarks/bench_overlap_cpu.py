"""Where Overlap Local-SGD's hidden all-reduce spends CPU, before and after our part was cut.

Two ranks on the real testbed (2 network namespaces, ``tc tbf`` at ``--rate``; root), or on
loopback with ``--loopback``; cnn-fmnist, batch 32, SGD lr 0.05, ``--steps`` steps per run. In
one set of rank processes, ``--rounds`` times in turn, so load hits them alike:

- ``compute``: Local SGD with one average at the very end (the compute-only reference);
- ``local``: blocking Local SGD at ``--tau``;
- ``overlap-old``: Overlap Local-SGD with the old collective (a new flat buffer by
  ``_flatten_dense_tensors``, then a ``clone``: two copies and two allocations per round);
- ``overlap``: the current one (one preallocated buffer, reused: one copy);
- ``overlap-nice``: the current one with gloo's threads at nice ``--comm-nice`` (root), so
  that a comm thread woken by the network runs before the rank's compute thread.

Per run and rank: wall time per step, the compute thread's CPU (user and system), the other
threads' CPU (gloo's workers and its TCP loop: user is gloo, system is the kernel's TCP send and
receive path they run), their run-queue delay (``/proc/<tid>/schedstat``: runnable but waiting
for a core), and the seconds the compute thread spent issuing the collective (the copy into the
flat buffer). The machine-wide softirq time (``/proc/stat``) is the kernel's network work not
charged to any thread (it includes other processes' too).

    flock /tmp/sgdlab-bench.lock nice -n 0 env PYTHONPATH=src .venv/bin/python \
        benchmarks/bench_overlap_cpu.py --rounds 3 --steps 120
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
VARIANTS = ("compute", "local", "overlap-old", "overlap", "overlap-nice")


def _threads() -> dict[int, dict[str, float]]:
    """Per thread of this process: user and system CPU seconds, run-queue seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            sched = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # from field 3 (state) on
        out[int(tid)] = {"user": int(fields[11]) / tick, "sys": int(fields[12]) / tick,
                         "runq": int(sched[1]) / 1e9}
    return out


def _softirq() -> float:
    line = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(line[7]) / os.sysconf("SC_CLK_TCK")  # cpu user nice system idle iowait irq softirq


def _old_average(self: Any, tensors: Any, inject: bool = True, out: Any = None) -> Any:
    """The collective as it was before the buffer was reused (commit 617965e), kept here to
    measure the difference side by side."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors

    from sgdlab.distributed.comm import Handle, collective

    flat = _flatten_dense_tensors([t.detach() for t in tensors]).clone()
    issued = time.perf_counter()
    delay = self.injection.delay_seconds(flat.numel() * flat.element_size()) if inject else 0.0
    with collective("all-reduce"):
        work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
    return Handle(flat, tensors, self.world_size, work, issued, delay)


def issue_cost(repeats: int) -> str:
    """Our part of a collective alone, on one process with no group: the old copy (flatten,
    then clone) against the copy into the reused buffer, cnn-fmnist's tensors, interleaved."""
    import torch
    from torch._utils import _flatten_dense_tensors

    from sgdlab.distributed.flat import flat_buffer, flat_copy
    from sgdlab.workloads import get_workload

    torch.set_num_threads(1)
    model = get_workload("cnn-fmnist").make_model(0)
    tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    buf = flat_buffer(tensors)
    ways = {"old: flatten + clone": lambda: _flatten_dense_tensors(
                [t.detach() for t in tensors]).clone(),
            "new: copy into the reused buffer": lambda: flat_copy(tensors, buf)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e6)
    nbytes = buf.numel() * buf.element_size()
    lines = [f"Our copy per collective ({len(tensors)} tensors, {nbytes / 1e6:.3f} MB; "
             f"{repeats} repeats, microseconds, median [min, max]):", ""]
    lines += [f"- {k}: {_med(v, 0)}" for k, v in times.items()]
    return "\n".join(lines) + "\n"


def rank_main(rank: int, world_size: int, payload: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    from sgdlab.distributed import Comm, LocalSGD, OverlapLocalSGD
    from sgdlab.workloads import get_workload

    main_tid = __import__("threading").get_native_id()
    comm_tids = [t for t in _threads() if t != main_tid]  # started by the process group
    wl = get_workload("cnn-fmnist")
    steps, tau = payload["steps"], payload["tau"]
    g = torch.Generator().manual_seed(rank)
    batches = [wl.batch(torch.randint(0, wl.num_train, (32,), generator=g))
               for _ in range(steps)]
    results = []
    for rnd in range(payload["rounds"]):
        for variant in payload["variants"]:
            nice = payload["comm_nice"] if variant == "overlap-nice" else 0
            for tid in comm_tids:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            model = wl.make_model(0)
            inner = torch.optim.SGD(model.parameters(), lr=0.05)
            comm = Comm()
            if variant == "overlap-old":
                comm.average = _old_average.__get__(comm)  # type: ignore[method-assign]
            issue = [0.0]
            average = comm.average

            def timed(*a: Any, _average: Any = average, _issue: list[float] = issue,
                      **k: Any) -> Any:
                t0 = time.perf_counter()
                handle = _average(*a, **k)
                _issue[0] += time.perf_counter() - t0
                return handle

            comm.average = timed  # type: ignore[method-assign]
            if variant.startswith("overlap"):
                opt: Any = OverlapLocalSGD(model, inner, tau=tau, alpha=0.6, comm=comm)
            else:
                opt = LocalSGD(model, inner, tau=steps if variant == "compute" else tau,
                               comm=comm)
            comm.barrier()
            before, soft0 = _threads(), _softirq()
            opt.start_clock()
            for x, y in batches:
                wl.loss(model, x, y).backward()
                opt.step()
                opt.zero_grad()
            s = opt.summary()
            after, soft1 = _threads(), _softirq()
            issue_s = issue[0]
            opt.synchronize()

            def delta(tids: list[int], key: str, a: Any = after, b: Any = before) -> float:
                return sum(a[t][key] - b.get(t, {key: 0.0})[key] for t in tids if t in a)

            others = [t for t in after if t != main_tid]
            results.append({
                "round": rnd, "variant": variant, "rank": rank,
                "ms_per_step": s["wall_seconds"] / steps * 1e3,
                "compute_ms_per_step": s["compute_seconds"] / steps * 1e3,
                "wait_ms_per_step": s["wait_seconds"] / steps * 1e3,
                "hidden": s["hidden_fraction"],
                "main_user_s": delta([main_tid], "user"), "main_sys_s": delta([main_tid], "sys"),
                "main_runq_s": delta([main_tid], "runq"),
                "comm_user_s": delta(others, "user"), "comm_sys_s": delta(others, "sys"),
                "comm_runq_s": delta(others, "runq"),
                "issue_ms_per_round": issue_s / max(1.0, s["rounds"]) * 1e3,
                "softirq_s": soft1 - soft0, "wall_s": s["wall_seconds"],
            })
    for tid in comm_tids:
        os.setpriority(os.PRIO_PROCESS, tid, 0)
    return results


def _med(values: list[float], digits: int = 2) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"[{min(values):.{digits}f}, {max(values):.{digits}f}]")


def report(rows: list[dict[str, Any]], steps: int) -> str:
    keys = ("ms_per_step", "compute_ms_per_step", "wait_ms_per_step", "main_user_s",
            "main_sys_s", "comm_user_s", "comm_sys_s", "comm_runq_s", "main_runq_s",
            "issue_ms_per_round", "softirq_s")
    lines = ["| variant | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        lines.append(f"| {v} | " + " | ".join(_med([r[k] for r in rs]) for k in keys) + " |")
    ratios = ["", "Rank 0's wall-time ratios per round of runs (median [min, max]):", ""]
    by = {(r["round"], r["variant"]): r for r in rows if r["rank"] == 0}
    rounds = sorted({r["round"] for r in rows})
    for v in variants:
        if v.startswith("overlap") and ("local" in variants):
            sp = [by[(k, "local")]["wall_s"] / by[(k, v)]["wall_s"] for k in rounds]
            oc = [by[(k, v)]["wall_s"] / by[(k, "compute")]["wall_s"] for k in rounds]
            ratios.append(f"- {v}: local/{v} {_med(sp)}; {v}/compute-only {_med(oc)}")
    return "\n".join(lines + ratios) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--tau", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", default="400mbit")
    ap.add_argument("--comm-nice", type=int, default=-10)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--loopback", action="store_true")
    ap.add_argument("--bursts", default="default,262144",
                    help="tbf bucket sizes in bytes to compare (default: the testbed's).")
    ap.add_argument("--micro", type=int, default=2000, help="Repeats of the copy alone.")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "overlap-cpu.json")
    args = ap.parse_args()
    from sgdlab.distributed.launch import launch

    payload = {"steps": args.steps, "tau": args.tau, "rounds": args.rounds,
               "comm_nice": args.comm_nice, "variants": args.variants.split(",")}
    load0, t0 = os.getloadavg(), time.time()
    if args.micro:
        print(issue_cost(args.micro))
    target = f"{Path(__file__).resolve()}:rank_main"
    if args.loopback:
        per_rank = launch(2, target, payload, timeout_s=1800)
        rows = {"loopback": [r for rank in per_rank for r in rank]}
    else:
        rows = testbed_runs(args, target, payload)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"{args.steps} steps, tau={args.tau}, {args.rounds} rounds; "
          f"{(time.time() - t0) / 60:.1f} min; load {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}\n")
    for where, some in rows.items():
        print(f"### {where}\n\n{report(some, args.steps)}")


def testbed_runs(args: Any, target: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A 2-host testbed per tbf bucket size (``--bursts``), all up at once; the rounds
    alternate between them, one launch each."""
    import contextlib

    from sgdlab.distributed.launch import launch
    from sgdlab.testbed import Testbed, teardown

    if os.geteuid() != 0:
        sys.exit("the testbed needs root; give --loopback to run on loopback")
    bursts = [None if b == "default" else int(b) for b in args.bursts.split(",")]
    rows: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        beds = {}
        for i, burst in enumerate(bursts):
            teardown(f"cpu{i}")
            beds[burst] = stack.enter_context(Testbed.up(2, args.rate, name=f"cpu{i}",
                                                         burst=burst))
        for rnd in range(args.rounds):
            for burst, tb in beds.items():
                where = f"testbed {args.rate}, tbf burst {burst or 'default'}"
                per_rank = launch(2, target, {**payload, "rounds": 1}, timeout_s=1800,
                                  **tb.launch_options(2))
                for rank in per_rank:
                    rows.setdefault(where, []).extend({**r, "round": rnd} for r in rank)
    return rows


if __name__ == "__main__":
    main()
