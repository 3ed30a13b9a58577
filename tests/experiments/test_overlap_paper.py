"""The paper protocol's plan and scoring (issue S2), without running it: the runs it asks for,
the link it sizes, and the time-to-target ratios it reports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from sgdlab.errors import ConfigError
from sgdlab.experiments.overlap_paper import (
    PROBE_RATE_BPS,
    PROTOCOLS,
    calibrated_rate_bps,
    link_rate_bps,
    protocol_configs,
    run_protocol,
    steady_step_seconds,
    ttt_ratios,
)


def test_the_paper_protocol_is_the_papers_configuration() -> None:
    p = PROTOCOLS["paper"]
    assert (p.world_size, p.taus, p.partitions, p.seeds, p.target) == (
        4, (1, 2, 8), ("iid", "dirichlet:0.5"), (0, 1, 2), 0.88)
    # tbf keeps a 64 KiB GSO packet whole (with its 45 segments' Ethernet, IP and TCP headers)
    assert all(q.burst_bytes > 65536 + 45 * (14 + 20 + 32) for q in PROTOCOLS.values())
    configs = protocol_configs(p, tau=2)
    algos = {c.algo for c in configs}
    assert algos == {"sync", "local", "overlap", "easgd", "cocod", "torch-local"}
    for c in configs:
        assert c.optimizer_options == {"momentum": 0.9, "nesterov": True}
        assert c.world_size == 4 and c.link_steps == 0 and c.bandwidth_mbps == 0  # a real link
        c.validate()
    overlap = [c for c in configs if c.algo == "overlap"]
    assert all((c.tau, c.alpha, c.anchor_momentum) == (2, 0.6, 0.7) for c in overlap)
    stragglers = [c for c in configs if c.straggler_prob]
    assert {(c.algo, c.straggler_prob, c.straggler_slowdown) for c in stragglers} == {
        ("local", 0.1, 3.0), ("overlap", 0.1, 3.0)}
    compute_only = [c for c in configs if c.tau == p.steps]
    per_cell = len(p.partitions) * len(p.seeds)
    assert len(compute_only) == per_cell and len(configs) == per_cell * 9


@pytest.mark.parametrize(("world", "tau"), [(2, 1), (4, 2), (4, 8)])
def test_the_link_carries_the_ring_in_tau_steps(world: int, tau: int) -> None:
    model_bytes, step = 828_000.0, 0.02
    rate = link_rate_bps(model_bytes, world, tau, step)
    per_link = 2 * (world - 1) / world * model_bytes * 8  # bits each rank's link carries
    assert per_link / (rate * 1448 / 1514) == pytest.approx(tau * step)
    with pytest.raises(ValueError, match="Invalid link"):
        link_rate_bps(model_bytes, 1, tau, step)


def _run(algo: str, seed: int, reached_at: float | None) -> dict[str, Any]:
    evals = [{"step": 10, "wall_seconds": 1.0, "accuracy": 0.5}]
    if reached_at is not None:
        evals.append({"step": 20, "wall_seconds": reached_at, "accuracy": 0.9})
    return {"algo": algo, "partition": "iid", "seed": seed, "link_steps": 2,
            "straggler_prob": 0.0, "metric": "accuracy", "evaluations": evals}


def test_time_to_target_ratios_per_seed_and_the_runs_that_missed() -> None:
    results = [_run("overlap", 0, 2.0), _run("local", 0, 3.0),
               _run("overlap", 1, 4.0), _run("local", 1, 8.0), _run("sync", 0, None),
               _run("sync", 1, 5.0)]
    row = ttt_ratios(results, 0.88)[0]
    assert row["local/overlap"] == "1.75 [1.50, 2.00]"
    assert row["sync/overlap"] == "1.25 [1.25, 1.25] (1 not reached)"
    assert row["cocod/overlap"] == "-"


def test_every_curve_has_several_points() -> None:
    """The demo's figure once had one evaluation (one dot) per run."""
    from sgdlab.experiments.overlap import showcase_configs

    curves = [c for c in showcase_configs() if c.tau < c.steps]  # not the compute-only run
    curves += [c for name in PROTOCOLS for c in protocol_configs(PROTOCOLS[name], 2)
               if c.tau < c.steps]
    assert curves and all(c.steps // c.eval_every >= 4 for c in curves)


def test_the_probe_sizes_the_link_from_its_steady_steps_not_its_warm_up() -> None:
    """The first scaled run's probe took the whole run's mean, warm-up included: its link was
    sized for a slower step than the runs took, so an all-reduce cost ≈ 2.9 steps, not τ."""
    warmup, steady = [0.9, 0.3], [0.04] * 30
    walls = [sum((warmup + steady)[: i + 1]) for i in range(len(warmup + steady))]
    losses = [(i + 1, w, 2.3) for i, w in enumerate(walls)]
    step = steady_step_seconds(losses, warmup=len(warmup))
    assert step == pytest.approx(0.04)
    model_bytes, world, tau = 828_000.0, 4, 2
    ring_s = (2 * (world - 1) / world * model_bytes * 8
              / (link_rate_bps(model_bytes, world, tau, step) * 1448 / 1514))
    assert ring_s == pytest.approx(tau * 0.04)  # τ of the steps the runs take
    with pytest.raises(ValueError, match="Invalid probe"):
        steady_step_seconds(losses[:2], warmup=2)


def _allreduce_seconds(rate_bps: float, overhead_s: float, model_bytes: float, world: int,
                       ) -> float:
    """A ring all-reduce on a tbf link: gloo's fixed overhead plus the bytes at goodput."""
    return overhead_s + 2 * (world - 1) / world * model_bytes * 8 / (rate_bps * 1448 / 1514)


def test_the_calibrated_link_makes_the_whole_all_reduce_take_tau_steps() -> None:
    """Sizing for the ring's bytes alone leaves gloo's overhead exposed: in the second scaled
    run the all-reduce took 1.05-1.15x its bytes' time."""
    model_bytes, world, tau, step, overhead = 828_000.0, 4, 2, 0.035, 0.012
    first = link_rate_bps(model_bytes, world, tau, 0.049)
    measured = _allreduce_seconds(first, overhead, model_bytes, world)
    rate = calibrated_rate_bps(model_bytes, world, tau, step, measured, first)
    assert _allreduce_seconds(rate, overhead, model_bytes, world) == pytest.approx(tau * step)
    bytes_only = link_rate_bps(model_bytes, world, tau, step)
    assert _allreduce_seconds(bytes_only, overhead, model_bytes, world) > 1.1 * tau * step
    with pytest.warns(UserWarning, match="overhead"):  # an overhead no link can hide
        calibrated_rate_bps(model_bytes, world, tau, step, 0.06 + measured, first)


def _fake_runs(configs: list[Any], launch_options: dict[str, Any] | None = None,
               timeout_s: float = 0.0) -> list[dict[str, Any]]:
    """What run_dist_many returns, without processes: steps of 40 ms after a slow first one,
    of which Overlap computes 30 ms (the rest waiting), its all-reduces taking 70 ms."""
    runs = []
    for c in configs:
        walls = [0.5 + 0.04 * i for i in range(c.steps)]
        compute = (0.03 if c.algo == "overlap" else 0.04) * c.steps
        rounds = c.steps // c.tau
        ranks = [{"compute_seconds": compute, "comm_seconds": 0.07 * (rounds - 1)}] * 4
        runs.append({**asdict(c), "launch": launch_options, "metric": "accuracy",
                     "compute_seconds": compute, "ranks": ranks, "rounds": float(rounds),
                     "losses": [(i + 1, w, 1.0) for i, w in enumerate(walls)],
                     "seconds_per_step": walls[-1] / c.steps,
                     "evaluations": [{"step": c.steps, "wall_seconds": walls[-1],
                                      "accuracy": 0.9}]})
    return runs


def _fake_testbed(monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], Any]:
    """A testbed that records each link's rate, over :func:`_fake_runs` (no processes), a
    0.828 MB model and no report: the rates a protocol sizes, and ``link`` to hand it."""
    import contextlib

    from sgdlab.experiments import overlap_paper

    links: list[float] = []

    @contextlib.contextmanager
    def link(rate: float, burst: int) -> Iterator[dict[str, Any]]:
        links.append(rate)
        yield {"testbed": rate}

    monkeypatch.setattr(overlap_paper, "run_dist_many", _fake_runs)
    monkeypatch.setattr(overlap_paper, "averaged_bytes", lambda workload: 828_000)
    monkeypatch.setattr(overlap_paper, "protocol_report", lambda results, p, out: {})
    return links, link


def test_the_probe_runs_on_the_testbed_and_seeds_merge_across_invocations(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    links, link = _fake_testbed(monkeypatch)
    name, p = "paper-scaled2", PROTOCOLS["paper-scaled2"]
    run_protocol(name, link, tmp_path, log=lambda _: None, seeds=(0,))
    # On the testbed's own hosts: a compute-only probe's steady 40 ms sizes a first link, on
    # which Overlap's own 30 ms of compute per step and 70 ms all-reduces size the runs' link.
    assert links == [PROBE_RATE_BPS, pytest.approx(link_rate_bps(828_000, 4, 2, 0.04)),
                     pytest.approx(calibrated_rate_bps(828_000, 4, 2, 0.03, 0.07, links[1]))]
    first = json.loads((tmp_path / "results.json").read_text())
    assert {r["seed"] for r in first} == {0} and all(r["launch"] == {"testbed": links[2]}
                                                    for r in first)
    assert all("losses" not in r for r in first)
    summary = run_protocol(name, link, tmp_path, log=lambda _: None, seeds=(1, 0))
    merged = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["seed"] for r in merged) == sorted([0, 1] * len(first))
    assert [q["seeds"] for q in summary["probes"]] == [[1, 0]]  # seed 0's first probe replaced
    run_protocol(name, link, tmp_path, log=lambda _: None, seeds=(2,))
    assert len(json.loads((tmp_path / "results.json").read_text())) == 3 * len(first)
    assert len(first) == 2 * len(p.partitions)  # Local SGD and Overlap
    with pytest.raises(ConfigError, match="holds results of protocol 'paper-scaled2'"):
        run_protocol("paper-scaled", link, tmp_path, log=lambda _: None, seeds=(0,))


def test_the_scaled_protocols_cover_every_baseline_and_short_straggler_runs() -> None:
    """tau = 8's baselines run beside Overlap on one invocation's link, the stragglers (a time
    per step) in shorter runs; sync SGD runs on tau = 1's link."""
    p = PROTOCOLS["paper-scaled3-tau8"]
    configs = protocol_configs(p, tau=8)
    full = {c.algo for c in configs if c.steps == p.steps and not c.straggler_prob}
    assert full == {"local", "overlap", "easgd", "cocod", "torch-local"}
    stragglers = [c for c in configs if c.straggler_prob]
    assert stragglers and {c.steps for c in stragglers} == {p.straggler_steps} != {p.steps}
    assert all(c.tau == 8 for c in configs)
    tau2 = PROTOCOLS["paper-scaled3-tau2"]
    assert {c.algo for c in protocol_configs(tau2, 2) if c.steps == tau2.steps} == {
        "sync", "local", "overlap", "easgd", "cocod", "torch-local"}
    assert {(c.algo, c.tau) for c in protocol_configs(PROTOCOLS["paper-scaled3-tau8-sync"], 8)
            } == {("sync", 1), ("overlap", 8)}
    tau1 = protocol_configs(PROTOCOLS["paper-scaled3-tau1"], tau=1)
    assert {(c.algo, c.tau) for c in tau1} == {("sync", 1), ("local", 1), ("overlap", 1)}
    # a protocol without a straggler length keeps its stragglers as long as its runs
    assert {c.steps for c in protocol_configs(PROTOCOLS["paper"], 2)} == {PROTOCOLS["paper"].steps}


def test_a_protocol_with_slack_sizes_the_all_reduce_into_its_share_of_tau(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``link_share`` < 1 leaves slack: the all-reduce is sized into that share of τ's steps,
    a faster link than the issue's sizing of the same measurements."""
    links, link = _fake_testbed(monkeypatch)
    p = PROTOCOLS["paper-scaled3-tau8-slack"]
    assert p.link_share == 0.75 and p.taus == (8,)
    summary = run_protocol("paper-scaled3-tau8-slack", link, tmp_path, log=lambda _: None,
                           seeds=(0,))
    exact = calibrated_rate_bps(828_000, 4, 8, 0.03, 0.07, links[1])
    assert links[2] == pytest.approx(calibrated_rate_bps(828_000, 4, 6, 0.03, 0.07, links[1]))
    assert links[2] > exact
    assert summary["probes"][0]["link_share"] == 0.75
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match="link_share"):
            replace(p, link_share=bad)
