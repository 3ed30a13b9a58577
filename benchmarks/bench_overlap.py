"""Overlap Local-SGD against SyncSGD, Local SGD, EASGD and CoCoD-SGD under an injected slow link.

Run (about ten minutes on two cores; the lock keeps two benchmarks from overlapping)::

    flock /tmp/sgdlab-bench.lock env PYTHONPATH=src python benchmarks/bench_overlap.py --grid small

The same as ``sgdlab bench overlap --grid small --out benchmarks/results/overlap``, plus the
markdown summary written to ``benchmarks/results/overlap.md``.

``--protocol paper`` (or a scaled one: ``paper-scaled``, ``paper-scaled2``,
``paper-scaled2-tau8``, ``paper-scaled3-tau1``, ``paper-scaled3-tau2``, ``paper-scaled3-tau8``,
``paper-scaled3-tau8-sync``) runs
:mod:`sgdlab.experiments.overlap_paper` on a real 4-host testbed instead (root) and writes
``benchmarks/results/overlap-<protocol>.md``; ``--seeds`` runs only those seeds and merges
them into the earlier ones' results, so a long protocol runs a seed per invocation::

    for seed in 0 1 2; do flock /tmp/sgdlab-bench.lock env PYTHONPATH=src \
        python benchmarks/bench_overlap.py --protocol paper-scaled2 --seeds $seed; done
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from sgdlab.experiments.overlap import GRIDS, overlap_benchmark, overlap_report

ROOT = Path(__file__).resolve().parent


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)\n"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _publish(stem: str, md: list[str], images: list[str]) -> None:
    """``results/<stem>.md``: the report's sections and its figures; printed too."""
    md = [*md, "## Figures\n",
          *[f"![{Path(i).stem}]({Path(i).relative_to(ROOT / 'results')})\n" for i in images]]
    (ROOT / "results" / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))


def _probes(summary: dict[str, Any], world_size: int) -> str:
    if "probes" not in summary:  # a run from before the probe moved onto the testbed
        return (f"Compute-only step with {world_size} ranks here: {summary['step_ms']:.1f} ms; "
                f"model {summary['model_bytes'] / 1e6:.3f} MB; tbf rate per τ (Mbit/s): "
                f"{ {t: round(r) for t, r in summary['links_mbit'].items()} }.\n")
    rows = [{"seeds": ",".join(map(str, q["seeds"])), "tau": q["tau"],
             "compute-only step ms": f"{q['compute_only_ms']:.1f}",
             "first link Mbit/s": f"{q['first_mbit']:.0f}",
             "Overlap's compute ms/step on it": f"{q['overlap_compute_ms']:.1f}",
             "its all-reduce ms": f"{q['overlap_allreduce_ms']:.1f}"
             if "overlap_allreduce_ms" in q else "not used",
             "link Mbit/s": f"{q['mbit']:.0f}"} for q in summary["probes"]]
    share = summary.get("plan", {}).get("link_share", 1.0)
    steps = "τ" if share == 1.0 else f"{share:g} τ"
    return (f"The link per invocation and τ (model {summary['model_bytes'] / 1e6:.3f} MB), "
            f"sized on the {world_size} testbed hosts: a compute-only step (after its warm-up) "
            "sizes a first link, on which Overlap's own compute per step sizes the link so "
            f"one all-reduce takes {steps} of Overlap's steps.\n\n" + _table(rows))


def protocol_main(name: str, out: Path | None, replot: bool,
                  seeds: tuple[int, ...] | None) -> None:
    import contextlib
    from collections.abc import Iterator

    from sgdlab.experiments.overlap_paper import PROTOCOLS, protocol_report, run_protocol
    from sgdlab.testbed import Testbed

    stem = out.name if out else f"overlap-{name}"  # the report beside its folder
    out = (out or ROOT / "results" / stem).resolve()  # the figures' links are relative to it
    p = PROTOCOLS[name]
    load_before, t0 = os.getloadavg(), time.time()
    if replot:
        summary = json.loads((out / "summary.json").read_text())
        results = json.loads((out / "results.json").read_text())
        summary.update(protocol_report(results, p, out))
    else:
        @contextlib.contextmanager
        def link(rate_bps: float, burst: int) -> Iterator[dict[str, Any]]:
            with Testbed.up(p.world_size, int(rate_bps), name="paper", burst=burst) as tb:
                yield tb.launch_options(p.world_size)

        summary = run_protocol(name, link, out, seeds=seeds)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    md = [
        f"Protocol `{name}` ({p.note}): {summary['plan']}\n",
        f"{'This invocation (seeds ' + ','.join(map(str, seeds)) + ')' if seeds else 'Ran'} "
        f"{'ran ' if seeds else ''}{(time.time() - t0) / 60:.1f} min; load before "
        f"{load_before[0]:.2f} "
        f"(`uptime` after: {uptime}).\n",
        _probes(summary, p.world_size),
        f"## Per configuration (median [min, max] over runs; target {p.target})\n",
        _table(summary["table"]),
        "## Time to target: each baseline's over Overlap's, per seed\n",
        _table(summary["time_to_target"]),
        "## Time per step ratios (per seed, median [min, max])\n",
        "`vs_compute`: Overlap's time per step / compute-only (goal ≤ 1.15); `local_speedup`: "
        "Local SGD's / Overlap's (goal ≥ 1.3); `straggle_*`: with stragglers (p=0.1, s=3) / "
        "without.\n",
        _table(summary["goals"]),
    ]
    _publish(stem, md, summary["images"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="small", choices=sorted(GRIDS))
    parser.add_argument("--protocol", default="",
                        help="paper, paper-scaled, paper-scaled2[-tau8] (testbed, root)")
    parser.add_argument("--seeds", default="",
                        help="comma-separated seeds of the protocol to run, merged into --out")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--replot", action="store_true",
                        help="redraw the figures and tables from <out>/results.json; run nothing")
    args = parser.parse_args()
    if args.protocol:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip()) or None
        protocol_main(args.protocol, args.out, args.replot, seeds)
        return
    suffix = "" if args.grid == "small" else f"-{args.grid}"
    args.out = args.out or ROOT / "results" / f"overlap{suffix}"
    load_before = os.getloadavg()
    t0 = time.time()
    if args.replot:
        results = json.loads((args.out / "results.json").read_text())
        summary = overlap_report(results, args.grid, args.out)
    else:
        summary = overlap_benchmark(args.out, grid=args.grid)
    minutes = (time.time() - t0) / 60
    load_after = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    md = [
        f"Grid `{args.grid}`: {GRIDS[args.grid]}\n",
        f"Ran {minutes:.1f} min; load average before {load_before[0]:.2f}, after "
        f"{load_after[0]:.2f} (`uptime`: {uptime}).\n",
        "Each run measures its compute step time at its start and sets the injected link so "
        "that one all-reduce of the model (0.828 MB) takes `link_steps` (= τ) local steps.\n",
        "## Per configuration (median [min, max] over runs)\n",
        _table(summary["table"]),
        "## Goals (per-seed ratios, median [min, max])\n",
        "`vs_compute`: Overlap's time per step / compute-only (goal ≤ 1.15); `sync_speedup`, "
        "`local_speedup`: their time per step / Overlap's (goals ≥ 1.6, ≥ 1.3); "
        "`straggle_*`: time per step with stragglers (p=0.1, s=3) / without.\n",
        _table(summary["goals"]),
    ]
    _publish(f"overlap-summary{suffix}", md, summary["images"])


if __name__ == "__main__":
    main()
