r"""``sgdlab bench overlap --protocol paper``: Overlap Local-SGD in the paper's configuration on
the real testbed (Wang, Liang, Joshi, ICASSP 2020, and ``JYWa/Overlap_Local_SGD``).

The protocol: W = 4 ranks, one per host of a 4-host testbed (network namespaces on a bridge,
every link shaped by ``tc tbf``); cnn-fmnist to its own target (0.88), IID and Dirichlet(0.5)
partitions, τ ∈ {1, 2, 8}, 3 seeds; inside every rank SGD with Nesterov momentum 0.9; Overlap
with α = 0.6 and anchor momentum β = 0.7. Against it, on the same link: sync SGD, Local SGD,
EASGD (α = 0.5/W), CoCoD-SGD and torch's own Local SGD (``torch-local``:
``PeriodicModelAverager`` as ``PostLocalSGDOptimizer`` drives it); Local SGD and Overlap also
with stragglers (p = 0.1, s = 3); and a compute-only run (one average at the very end).

**The link is sized so one all-reduce costs about τ of Overlap's own local steps** (the compute
that must hide it), measured on the testbed's own W hosts, in short runs per τ
(:func:`size_link`):

1. a compute-only run of ``probe_steps`` (one average at the very end, on a fast link) with
   the protocol's model, batch and optimizer gives the step time :math:`t_0`: the mean of its
   steps after the first ``probe_warmup`` (:func:`steady_step_seconds`);
2. Overlap itself (α, β, τ of the protocol) runs ``probe_steps`` twice on the link sized from
   :math:`t_0` (the first run pays the processes' warm-up); the second gives Overlap's compute
   per step :math:`t` and its all-reduce's time :math:`c`, averaged over the ranks;
3. what :math:`c` took beyond the ring's bytes at that rate is gloo's own overhead :math:`a`
   (the ring's 2(W−1) phases, its CPU shared with the compute), and the link is sized so the
   bytes take the rest of τ steps, :math:`\tau t - a` (:func:`calibrated_rate_bps`).

Why not the compute-only step alone: with W = 4 ranks on two cores, a rank's step depends on
what the other ranks do meanwhile. Compute-only, all four always want a core; with an
all-reduce on the link they sometimes wait, and the rest compute faster. So a compute-only
step is slower than the step Overlap computes on the testbed (58 ms against 47 ms in a short
run here), and a link sized from it is too slow. The first scaled run sized its link from a
40-step compute-only mean on loopback (61.6 ms) while Overlap computed 44 ms per step, so its
all-reduce took ≈ 2.9 steps instead of τ = 2 (``benchmarks/results/overlap-paper-scaled-notes.md``).
A ring all-reduce of :math:`n` bytes sends and receives :math:`2(W-1)n/W` bytes on every
rank's link, at tbf's TCP goodput :math:`r \cdot 1448/1514`, so the rate for τ is

.. math:: r_\tau = \frac{8 \cdot 2(W-1) n / W}{(\tau\, t - a) \cdot 1448/1514}.

The second scaled run sized the link from one Overlap probe of 40 steps, its whole mean for
:math:`t` and :math:`a = 0`: Overlap then computed 9–25 % less per step in the runs than in
that probe (whose mean held its processes' warm-up) and the all-reduce took 1.05–1.15× its
bytes' time, so it took 2.4–2.8 steps, not 2
(``benchmarks/results/overlap-paper-scaled2-notes.md``). The calibration assumes the overhead
is the same at any rate; on two cores under four computing ranks it is not (a check at the
calibrated 173 Mbit/s: 35–48 ms of overhead against 11 ms measured at 117 Mbit/s; the
all-reduce is then bound by CPU, not by the link). A link of a real network cannot be
resized per run, so :math:`t` is measured once per τ and invocation, just before that τ's
runs, and the machine's load may drift during them (the cores are shared); each
invocation's sizing is recorded beside the results.

Each τ gets its own testbed at :math:`r_\tau`, and every algorithm (sync SGD too) runs on it.
The tbf bucket is ``burst_bytes`` (96 KiB, :data:`GSO_BURST_BYTES`), which lets up to that
much through at once: at the τ = 2 link of about 100 Mbit/s an all-reduce carries 1.24 MB per
link, so the bucket shortens it by under 8 % (the calibration's :math:`a` includes that).

**Seeds across invocations.** ``run_protocol(..., seeds=(1,))`` runs only those seeds of the
protocol and merges them into ``out``'s earlier results of the same protocol (the runs of
those seeds replaced, the others kept), so a protocol too long for one sitting runs a seed at
a time; the report is over every run in ``out``.

This module builds the runs and scores them; the testbed is the caller's (``cli/`` brings it
up: nothing here imports :mod:`sgdlab.testbed`), handed in as ``link(rate_bps)``, a context
manager that yields :func:`~sgdlab.run.dist.run_dist_many`'s ``launch_options``.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
import warnings
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
# old default (32 KiB at these rates) tbf cut each into 1514-byte frames in software and the
# kernel's per-packet work landed on the cores that compute (benchmarks/results/overlap-cpu.md).
# The testbed's default is now at least this too; the protocol names its own bucket so that
# its runs do not depend on that default.
GSO_BURST_BYTES = 96 * 1024
# The probe's testbed: it only computes (one 0.8 MB average at its end), so its rate hardly
# matters; fast enough that the final average costs nothing measured.
PROBE_RATE_BPS = 1e9
# Rank 0 evaluates a run's snapshots after its last step (off the clock) while the other ranks
# already wait in the next run's first collective: dozens of evaluations on shared cores take
# longer than the default 60 s, which would read as a stalled peer.
COLLECTIVE_TIMEOUT_S = 900.0


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
    straggler_steps: int = 0  # the straggler runs' length; 0: ``steps``
    compute_only: bool = True
    algos: tuple[str, ...] = ALGOS
    probe_steps: int = 60
    probe_warmup: int = 10
    burst_bytes: int = GSO_BURST_BYTES
    # The link is sized so one all-reduce takes ``link_share * tau`` of Overlap's steps: 1.0 is
    # the sizing (no slack: any late round is waited for); below 1 leaves slack.
    link_share: float = 1.0
    note: str = "the paper's protocol"

    def __post_init__(self) -> None:
        if not 0.0 < self.link_share <= 1.0:
            raise ValueError(f"Invalid link_share: {self.link_share} (in (0, 1])")


def _scaled(taus: tuple[int, ...], steps: int, note: str, **kw: Any) -> PaperProtocol:
    """A scaled protocol to the workload's own target: 3 seeds, an evaluation every 20th of
    the run on 1000 samples, no long compute-only run (the link's sizing records a short one
    of ``probe_steps`` = 40; the goal is against Overlap's own compute)."""
    return PaperProtocol(taus=taus, steps=steps, eval_every=steps // 20, eval_samples=1000,
                         compute_only=False, probe_steps=40, note=f"scaled: {note}", **kw)


PROTOCOLS = {
    "paper": PaperProtocol(),
    # What two shared cores allow in one benchmark invocation (under 15 minutes): tau = 2 only,
    # IID and Dirichlet(0.5) with one seed, runs of 400 steps, time to an earlier target.
    "paper-scaled": PaperProtocol(taus=(2,), seeds=(0,), steps=400, eval_every=50,
                                  eval_samples=1000, target=0.8,
                                  note="scaled: tau 2, seed 0, 400 steps, target 0.80"),
    # Long enough for the workload's own target (0.88), evaluated often enough to resolve the
    # time to it; only Overlap and blocking Local SGD, no stragglers: three seeds in about 20
    # minutes of two shared cores, a seed per invocation.
    "paper-scaled2": _scaled((2,), 600, "tau 2, 600 steps, Overlap and Local SGD",
                             algos=("local", "overlap"), stragglers=False),
    # The same at tau = 8, where an all-reduce is hidden over 8 steps and gloo's per-round CPU
    # is spread over 4x the compute: whether Overlap's wall/compute goal is a matter of tau on
    # two shared cores. 800 steps: Local SGD at tau 8 needs more steps to 0.88.
    "paper-scaled2-tau8": _scaled((8,), 800, "tau 8, 800 steps, Overlap and Local SGD",
                                  algos=("local", "overlap"), stragglers=False),
    # tau = 8's baselines beside Overlap and Local SGD on one invocation's link (runs on links
    # sized in different invocations are not compared): EASGD, CoCoD-SGD and torch's Local SGD
    # to 0.88, and the stragglers, whose slowdown is a time per step, in shorter runs. Sync SGD
    # has its own protocol on this link (paper-scaled3-tau8-sync, below): each of its steps
    # there costs about 9 of Overlap's, so it runs shorter and beside Overlap only.
    "paper-scaled3-tau8": _scaled((8,), 800, "tau 8, 800 steps, every baseline but sync; "
                                  "stragglers over 240 steps",
                                  algos=("local", "overlap", "easgd", "cocod", "torch-local"),
                                  straggler_steps=240),
    # tau = 2, every baseline (sync SGD too: on tau = 2's link its all-reduce costs about 2
    # steps) to 0.88 on one invocation's link, the stragglers in 240-step runs.
    "paper-scaled3-tau2": _scaled((2,), 600, "tau 2, 600 steps, every baseline; stragglers "
                                  "over 240 steps", straggler_steps=240),
    # Sync SGD on tau = 8's link, beside Overlap on the same invocation's link: each of its
    # steps waits for an all-reduce that costs about 8 of Overlap's, so 500 steps (sync SGD
    # reaches 0.88 in about 250 at tau 1) take about 3 minutes a run.
    "paper-scaled3-tau8-sync": _scaled((8,), 500, "tau 8's link, 500 steps, sync SGD and "
                                       "Overlap", algos=("sync", "overlap"), stragglers=False),
    # tau = 8 with slack: the link sized so one all-reduce takes 0.75 of tau's steps, not all
    # of them. At exactly tau steps (paper-scaled3-tau8) Overlap waited 5-6 ms a step for
    # rounds that ran late by jitter and the compute's CPU (wall/compute 1.16): how much of
    # that a link with a quarter's slack removes, and what it leaves of the lead over Local SGD.
    "paper-scaled3-tau8-slack": _scaled((8,), 800, "tau 8, a link with slack (the all-reduce "
                                        "in 0.75 tau steps), 800 steps, Local SGD and Overlap",
                                        algos=("local", "overlap"), stragglers=False,
                                        link_share=0.75),
    # tau = 1: an all-reduce every step, on a link sized so it costs one step; sync SGD,
    # Local SGD (at tau 1 it averages the models where sync averages the gradients) and
    # Overlap, 600 steps to 0.88.
    "paper-scaled3-tau1": _scaled((1,), 600, "tau 1, 600 steps, sync SGD, Local SGD and "
                                  "Overlap", algos=("sync", "local", "overlap"),
                                  stragglers=False),
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


def calibrated_rate_bps(model_bytes: float, world_size: int, tau: float, step_seconds: float,
                        allreduce_seconds: float, at_rate_bps: float) -> float:
    """The tbf rate at which the whole all-reduce, gloo's own overhead included, takes τ steps
    (``tau`` may be fractional: a protocol's ``link_share`` of its τ).

    ``allreduce_seconds`` was measured at ``at_rate_bps``; what it took beyond the ring's bytes
    at that rate's goodput is gloo's overhead (its ring's phases, its CPU), taken to be the same
    at any rate, so the ring's bytes get the rest of the τ steps. If the overhead alone fills
    more than half of them, the bytes get half, with a warning (no link can then hide it).

    >>> bits = 8 * 2 * 3 / 4 * 1e6 / (1448 / 1514)  # W = 4, 1 MB: 1.5 MB per link
    >>> rate = calibrated_rate_bps(1e6, 4, 2, 0.05, 0.020 + bits / 100e6, 100e6)
    >>> round(0.020 + bits / rate, 6)  # overhead and bytes take 2 steps of 50 ms
    0.1
    """
    ideal = link_rate_bps(model_bytes, world_size, 1, 1.0)  # bit/s for the ring in 1 s
    overhead = allreduce_seconds - ideal / at_rate_bps
    budget = tau * step_seconds - overhead
    if budget < 0.5 * tau * step_seconds:
        warnings.warn(f"the all-reduce's overhead ({overhead * 1e3:.1f} ms) fills over half of "
                      f"tau={tau} steps of {step_seconds * 1e3:.1f} ms; sizing the link for "
                      "the bytes to take the other half", stacklevel=2)
        budget = 0.5 * tau * step_seconds
    return ideal / budget


def steady_step_seconds(losses: list[Any], warmup: int) -> float:
    """Mean seconds per step after the first ``warmup`` steps, from a run's per-step
    ``(step, wall_seconds, loss)`` records (rank 0's ``losses``): the steady-state step.

    >>> round(steady_step_seconds([(1, 0.5, 0.0), (2, 0.6, 0.0), (3, 0.7, 0.0)], warmup=1), 6)
    0.1
    """
    walls = [float(w) for _, w, *_ in losses]  # each step's end on the run's clock
    if warmup < 1 or len(walls) <= warmup:
        raise ValueError(f"Invalid probe: {len(walls)} steps after a warm-up of {warmup}")
    return (walls[-1] - walls[warmup - 1]) / (len(walls) - warmup)


def _base_config(p: PaperProtocol, **run: Any) -> DistConfig:
    """A Local SGD run with the protocol's model, batch, inner optimizer and timeout; ``run``
    gives its length, seed, partition and evaluation (the runs and the link's probes alike)."""
    return DistConfig(
        algo="local", world_size=p.world_size, workload=p.workload, lr=p.lr,
        batch_size=p.batch_size, alpha=p.alpha,
        optimizer_options={"momentum": p.momentum, "nesterov": True},
        collective_timeout_s=COLLECTIVE_TIMEOUT_S, **run)


def protocol_configs(p: PaperProtocol, tau: int) -> list[DistConfig]:
    """The runs on τ's link: per partition and seed, compute-only (``p.compute_only``), each of
    ``p.algos`` at τ (sync at 1), and Local SGD and Overlap with stragglers (``p.stragglers``)."""
    configs = []
    for part in p.partitions:
        for seed in p.seeds:
            base = _base_config(p, steps=p.steps, seed=seed, partition=part,
                                eval_every=p.eval_every, eval_samples=p.eval_samples)
            if p.compute_only:
                configs.append(replace(base, tau=p.steps, eval_every=p.steps))
            for algo in p.algos:
                configs.append(replace(
                    base, algo=algo, tau=1 if algo == "sync" else tau,
                    alpha=0.5 / p.world_size if algo == "easgd" else p.alpha,
                    anchor_momentum=p.anchor_momentum if algo == "overlap" else 0.0))
            if p.stragglers:
                for algo in ("local", "overlap"):
                    configs.append(replace(
                        base, algo=algo, tau=tau, straggler_prob=0.1, straggler_slowdown=3.0,
                        steps=p.straggler_steps or p.steps,
                        anchor_momentum=p.anchor_momentum if algo == "overlap" else 0.0))
    return configs


def run_protocol(name: str, link: Link, out: Path, log: Callable[[str], None] = print,
                 seeds: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Per τ: probe the step time on the testbed, bring up τ's link and run; then the tables,
    goals and figures over every run in ``out`` (``seeds``: only these, merged into ``out``)."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    if seeds is not None:
        if not seeds or any(s < 0 for s in seeds):
            raise ConfigError(f"invalid seeds: {list(seeds)}")
        p = replace(p, seeds=tuple(dict.fromkeys(seeds)))
    check_output_paths(out=out)
    out.mkdir(parents=True, exist_ok=True)
    kept, probes = _earlier_results(out, name, p.seeds) if seeds is not None else ([], [])
    t0 = time.time()
    model_bytes = float(averaged_bytes(p.workload))
    results: list[dict[str, Any]] = []
    for tau in p.taus:
        sizing = size_link(p, link, tau, model_bytes)
        probes.append({"seeds": list(p.seeds), **sizing})
        rate = sizing["mbit"] * 1e6
        configs = protocol_configs(p, tau)
        log(f"tau={tau}, seeds {list(p.seeds)}: on the {p.world_size} testbed hosts a "
            f"compute-only step of {sizing['compute_only_ms']:.1f} ms sized a "
            f"{sizing['first_mbit']:.0f} mbit link, on which Overlap computed "
            f"{sizing['overlap_compute_ms']:.1f} ms per step; model {model_bytes / 1e6:.3f} MB; "
            f"link {rate / 1e6:.0f} mbit, {len(configs)} runs")
        with link(rate, p.burst_bytes) as launch_options:
            runs = run_dist_many(configs, launch_options, timeout_s=3600.0 * 6)
        for r in runs:
            # The link was sized for tau (a real one, not injected): the label goals() keys on.
            r["link_steps"] = 0 if r["tau"] == p.steps else tau
            r["link_bits_per_s"] = rate
            r.pop("losses", None)
        results += runs
        (out / "results.json").write_text(json.dumps(kept + results, default=str, indent=1))
    results = kept + results
    summary = protocol_report(results, PROTOCOLS[name], out)
    summary.update({"protocol": name, "plan": asdict(PROTOCOLS[name]), "probes": probes,
                    "model_bytes": model_bytes, "minutes": (time.time() - t0) / 60})
    (out / "summary.json").write_text(json.dumps(summary, default=str, indent=1))
    return summary


def size_link(p: PaperProtocol, link: Link, tau: int, model_bytes: float) -> dict[str, Any]:
    """τ's link rate from short runs on the testbed's hosts (see the module docstring): a
    compute-only run's steady step sizes a first link, on which Overlap's own steady compute
    per step and its all-reduce's measured time size the link the protocol runs on."""
    base = _base_config(p, steps=p.probe_steps, tau=p.probe_steps, eval_every=p.probe_steps,
                        eval_samples=100)
    with link(PROBE_RATE_BPS, p.burst_bytes) as launch_options:
        compute_only = run_dist_many([base], launch_options)[0]
    t0 = steady_step_seconds(compute_only["losses"], p.probe_warmup)
    first = link_rate_bps(model_bytes, p.world_size, tau, t0)
    overlap_probe = replace(base, algo="overlap", tau=tau, anchor_momentum=p.anchor_momentum)
    with link(first, p.burst_bytes) as launch_options:
        # Twice in the same processes: the first pays the processes' warm-up, the second is
        # measured (compute_seconds has no per-step record to drop warm-up steps from).
        overlap = run_dist_many([overlap_probe, overlap_probe], launch_options)[1]
    t = statistics.fmean(r["compute_seconds"] for r in overlap["ranks"]) / p.probe_steps
    # Overlap's last all-reduce is still in flight when the steps end (synchronize completes
    # it, outside the rounds), so the rounds hold one completed all-reduce fewer than rounds.
    allreduce = statistics.fmean(r["comm_seconds"] for r in overlap["ranks"]) / max(
        1.0, overlap["rounds"] - 1)
    rate = calibrated_rate_bps(model_bytes, p.world_size, tau * p.link_share, t, allreduce,
                               first)
    return {"tau": tau, "link_share": p.link_share, "compute_only_ms": t0 * 1e3,
            "compute_only_whole_run_ms": compute_only["seconds_per_step"] * 1e3,
            "first_mbit": first / 1e6, "overlap_compute_ms": t * 1e3,
            "overlap_allreduce_ms": allreduce * 1e3,
            "overlap_wall_ms": overlap["seconds_per_step"] * 1e3, "mbit": rate / 1e6}


def _earlier_results(out: Path, name: str, seeds: tuple[int, ...],
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``out``'s runs and probes of protocol ``name`` for seeds other than ``seeds``."""
    if not (out / "summary.json").exists():
        return [], []
    summary = json.loads((out / "summary.json").read_text())
    if summary.get("protocol") != name:
        raise ConfigError(f"{out} holds results of protocol {summary.get('protocol')!r}, not "
                          f"{name!r}: choose another --out")
    runs = json.loads((out / "results.json").read_text())
    probes = [q for q in summary.get("probes", []) if set(q["seeds"]) - set(seeds)]
    return [r for r in runs if r["seed"] not in seeds], probes


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
