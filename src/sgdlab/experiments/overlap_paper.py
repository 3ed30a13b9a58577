r"""``sgdlab bench overlap --protocol paper``: Overlap Local-SGD in the paper's configuration on
the real testbed (Wang, Liang, Joshi, ICASSP 2020, and ``JYWa/Overlap_Local_SGD``).

The protocol: W = 4 ranks, one per host of a 4-host testbed (network namespaces on a bridge,
every link shaped by ``tc tbf``); cnn-fmnist to its own target (0.88), IID and Dirichlet(0.5)
partitions, τ ∈ {1, 2, 8}, 3 seeds; inside every rank SGD with Nesterov momentum 0.9; Overlap
with α = 0.6 and anchor momentum β = 0.7. Against it, on the same link: sync SGD, Local SGD,
EASGD (α = 0.5/W), CoCoD-SGD and torch's own Local SGD (``torch-local``:
``PeriodicModelAverager`` as ``PostLocalSGDOptimizer`` drives it); Local SGD and Overlap also
with stragglers (p = 0.1, s = 3); and a compute-only run (one average at the very end).

**The link is sized so one all-reduce costs about τ local steps.** First a compute-only run of
``probe_steps`` on the same W ranks (loopback) gives the step time :math:`t` with all W ranks
sharing this machine's cores. A ring all-reduce of :math:`n` bytes sends and receives
:math:`2(W-1)n/W` bytes on every rank's link, at tbf's TCP goodput :math:`r \cdot 1448/1514`,
so the rate for τ is

.. math:: r_\tau = \frac{8 \cdot 2(W-1) n / W}{\tau\, t \cdot 1448/1514}.

Each τ gets its own testbed at :math:`r_\tau`, and every algorithm (sync SGD too) runs on it;
gloo's own latency and CPU come on top, which is the point of a real link. The tbf bucket is
``burst_bytes`` (96 KiB, :data:`GSO_BURST_BYTES`), which lets up to that much through at once:
at the τ = 2 link of about 100 Mbit/s an all-reduce carries 1.24 MB per link, so the bucket
shortens it by under 8 %.

This module builds the runs and scores them; the testbed is the caller's (``cli/`` brings it
up: nothing here imports :mod:`sgdlab.testbed`), handed in as ``link(rate_bps)``, a context
manager that yields :func:`~sgdlab.run.dist.run_dist_many`'s ``launch_options``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sgdlab.errors import ConfigError
from sgdlab.experiments.overlap import _fmt, goals, plot_runs, summarize, time_to
from sgdlab.run.config import DistConfig, check_output_paths
from sgdlab.run.dist import run_dist_many

TCP_PAYLOAD_SHARE = 1448 / 1514  # tbf counts whole frames; see sgdlab.testbed.links
ALGOS = ("sync", "local", "overlap", "easgd", "cocod", "torch-local")

Link = Callable[[float, int], contextlib.AbstractContextManager[dict[str, Any]]]
# tbf's bucket: above one GSO packet (64 KiB of payload plus its segments' headers), so tbf
# keeps TCP's 64 KiB packets whole, as a NIC's segmentation offload would; with the testbed's
# default (32 KiB at these rates) tbf cuts each into 1514-byte frames in software and the
# kernel's per-packet work lands on the cores that compute (benchmarks/results/overlap-cpu.md).
GSO_BURST_BYTES = 96 * 1024


@dataclass(frozen=True)
class PaperProtocol:
    """One protocol: what runs, how long, and what counts as the target."""

    world_size: int = 4
    workload: str = "cnn-fmnist"
    taus: tuple[int, ...] = (1, 2, 8)
    partitions: tuple[str, ...] = ("iid", "dirichlet:0.5")
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 3000
    eval_every: int = 150
    eval_samples: int = 2000
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    alpha: float = 0.6
    anchor_momentum: float = 0.7
    target: float = 0.88
    stragglers: bool = True
    probe_steps: int = 40
    burst_bytes: int = GSO_BURST_BYTES
    note: str = "the paper's protocol"


PROTOCOLS = {
    "paper": PaperProtocol(),
    # What two shared cores allow in one benchmark invocation (under 15 minutes): tau = 2 only,
    # IID and Dirichlet(0.5) with one seed, runs of 400 steps, time to an earlier target.
    "paper-scaled": PaperProtocol(taus=(2,), seeds=(0,), steps=400, eval_every=50,
                                  eval_samples=1000, target=0.8,
                                  note="scaled: tau 2, seed 0, 400 steps, target 0.80"),
}


def link_rate_bps(model_bytes: float, world_size: int, tau: int, step_seconds: float) -> float:
    """The tbf rate (bit/s) at which a ring all-reduce of ``model_bytes`` takes ``tau`` steps.

    >>> round(link_rate_bps(1e6, 4, 2, 0.01) / 1e6)  # 1.5 MB per link in 20 ms of goodput
    627
    """
    if step_seconds <= 0 or tau < 1 or world_size < 2:
        raise ValueError(f"Invalid link: step {step_seconds} s, tau {tau}, W {world_size}")
    ring_bytes = 2 * (world_size - 1) / world_size * model_bytes
    return 8 * ring_bytes / (tau * step_seconds) / TCP_PAYLOAD_SHARE


def protocol_configs(p: PaperProtocol, tau: int) -> list[DistConfig]:
    """The runs on τ's link: per partition and seed, compute-only, every algorithm at τ (sync
    at 1), and Local SGD and Overlap with stragglers."""
    configs = []
    for part in p.partitions:
        for seed in p.seeds:
            base = DistConfig(
                algo="local", world_size=p.world_size, workload=p.workload, lr=p.lr,
                batch_size=p.batch_size, steps=p.steps, seed=seed, partition=part,
                eval_every=p.eval_every, eval_samples=p.eval_samples, alpha=p.alpha,
                optimizer_options={"momentum": p.momentum, "nesterov": True})
            configs.append(replace(base, tau=p.steps, eval_every=p.steps))  # compute only
            for algo in ALGOS:
                configs.append(replace(
                    base, algo=algo, tau=1 if algo == "sync" else tau,
                    alpha=0.5 / p.world_size if algo == "easgd" else p.alpha,
                    anchor_momentum=p.anchor_momentum if algo == "overlap" else 0.0))
            if p.stragglers:
                for algo in ("local", "overlap"):
                    configs.append(replace(
                        base, algo=algo, tau=tau, straggler_prob=0.1, straggler_slowdown=3.0,
                        anchor_momentum=p.anchor_momentum if algo == "overlap" else 0.0))
    return configs


def run_protocol(name: str, link: Link, out: Path, log: Callable[[str], None] = print,
                 ) -> dict[str, Any]:
    """Probe the step time, then per τ bring up the link and run; tables, goals, figures."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    check_output_paths(out=out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    probe = run_dist_many([DistConfig(
        algo="local", world_size=p.world_size, workload=p.workload, lr=p.lr,
        batch_size=p.batch_size, steps=p.probe_steps, tau=p.probe_steps,
        eval_every=p.probe_steps, eval_samples=100,
        optimizer_options={"momentum": p.momentum, "nesterov": True})])[0]
    step_s = probe["seconds_per_step"]
    model_bytes = float(averaged_bytes(p.workload))
    log(f"compute-only step with {p.world_size} ranks here: {step_s * 1e3:.1f} ms; "
        f"model {model_bytes / 1e6:.3f} MB")
    results: list[dict[str, Any]] = []
    links = {}
    for tau in p.taus:
        rate = link_rate_bps(model_bytes, p.world_size, tau, step_s)
        links[tau] = rate
        configs = protocol_configs(p, tau)
        log(f"tau={tau}: link {rate / 1e6:.0f} mbit, {len(configs)} runs")
        with link(rate, p.burst_bytes) as launch_options:
            runs = run_dist_many(configs, launch_options, timeout_s=3600.0 * 6)
        for r in runs:
            # The link was sized for tau (a real one, not injected): the label goals() keys on.
            r["link_steps"] = 0 if r["tau"] == p.steps else tau
            r["link_bits_per_s"] = rate
        results += runs
        (out / "results.json").write_text(json.dumps(
            [{k: v for k, v in r.items() if k != "losses"} for r in results],
            default=str, indent=1))
    summary = protocol_report(results, p, out)
    summary.update({"protocol": name, "plan": asdict(p), "step_ms": step_s * 1e3,
                    "model_bytes": model_bytes,
                    "links_mbit": {str(t): r / 1e6 for t, r in links.items()},
                    "minutes": (time.time() - t0) / 60})
    (out / "summary.json").write_text(json.dumps(summary, default=str, indent=1))
    return summary


def protocol_report(results: list[dict[str, Any]], p: PaperProtocol, out: Path,
                    ) -> dict[str, Any]:
    """The table (time to target, accuracy at equal steps, hidden fraction), the goals and
    the time-to-target ratios per seed, and a figure per (partition, τ)."""
    runs = [r for r in results if r["tau"] != p.steps]
    images = []
    for part in p.partitions:
        for tau in p.taus:
            chosen = [r for r in runs if r["partition"] == part and r["link_steps"] == tau
                      and not r["straggler_prob"]]
            if chosen:
                name = f"overlap-paper-{part.replace(':', '')}-tau{tau}.png"
                images.append(str(plot_runs(chosen, out / name, f"{p.workload} · W="
                                            f"{p.world_size} · {part} · τ={tau} (testbed)")))
    return {"target": p.target, "table": summarize(results, p.target), "goals": goals(results),
            "time_to_target": ttt_ratios(results, p.target), "images": images}


def ttt_ratios(results: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Per (partition, τ): each baseline's time to target over Overlap's, per seed."""
    rows = []
    keys = sorted({(r["partition"], r["link_steps"]) for r in results
                   if r["algo"] == "overlap" and r["link_steps"]})
    for part, link in keys:
        row: dict[str, Any] = {"partition": part, "tau": link}
        for algo in ("sync", "local", "easgd", "cocod", "torch-local"):
            ratios, missed = [], 0
            for seed in sorted({r["seed"] for r in results}):
                pick = {r["algo"]: r for r in results if (r["partition"], r["seed"],
                        r["link_steps"], r["straggler_prob"]) == (part, seed, link, 0.0)}
                if algo not in pick or "overlap" not in pick:
                    continue
                theirs, ours = time_to(pick[algo], target), time_to(pick["overlap"], target)
                if theirs is None or ours is None:
                    missed += 1
                    continue
                ratios.append(theirs / ours)
            row[f"{algo}/overlap"] = (_fmt(ratios, 2) if ratios else "-") + (
                f" ({missed} not reached)" if missed else "")
        rows.append(row)
    return rows


def averaged_bytes(workload: str) -> int:
    """Bytes of the tensors an average sends: the parameters and floating-point buffers."""
    from sgdlab.workloads import get_workload

    model = get_workload(workload).make_model(0)
    tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    return sum(t.numel() * t.element_size() for t in tensors)
