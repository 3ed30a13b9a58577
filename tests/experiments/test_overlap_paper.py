"""The paper protocol's plan and scoring (issue S2), without running it: the runs it asks for,
the link it sizes, and the time-to-target ratios it reports."""

from __future__ import annotations

from typing import Any

import pytest

from sgdlab.experiments.overlap_paper import (
    PROTOCOLS,
    link_rate_bps,
    protocol_configs,
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
