"""The benchmark's pure parts: the grid it builds, and the goals it computes from results."""

from __future__ import annotations

from typing import Any

import pytest

from sgdlab.experiments.overlap import (
    GRIDS,
    bandwidth_for,
    benchmark_configs,
    goals,
    summarize,
    time_to,
)


def test_each_tau_gets_a_link_where_an_all_reduce_costs_tau_steps() -> None:
    grid = GRIDS["small"]
    configs = benchmark_configs(grid)
    for c in configs:
        assert c.link_steps in (0, c.tau) and not c.bandwidth_mbps
    compute_only = [c for c in configs if not c.link_steps]
    assert len(compute_only) == len(grid["runs"]) and all(c.tau == grid["steps"]
                                                         for c in compute_only)
    algos = {(c.algo, c.tau) for c in configs if c.link_steps and not c.straggler_prob}
    # Sync runs on each tau's link too, as the baseline there (it communicates every step).
    assert algos == {(a, t) for a in ("sync", "local", "overlap", "easgd", "cocod")
                     for t in grid["taus"]}
    stragglers = [c for c in configs if c.straggler_prob]
    assert {c.algo for c in stragglers} == {"local", "overlap"}
    assert bandwidth_for(1e6, 1.0) == pytest.approx(8.0)


def _result(algo: str, sps: float, *, p: float = 0.0, bw: float = 2.0, tau: int = 2,
            acc: tuple[float, ...] = (0.5, 0.8)) -> dict[str, Any]:
    return {
        "workload": "w", "world_size": 2, "partition": "iid", "algo": algo, "tau": tau,
        "seed": 0, "straggler_prob": p, "link_steps": bw,
        "ranks": [{"link_mbps": 50.0}], "seconds_per_step": sps,
        "steps": 10, "wait_seconds": 0.1, "wall_seconds": 10 * sps, "compute_seconds": 8 * sps,
        "hidden_fraction": 0.5, "metric_value": acc[-1],
        "metric": "accuracy", "target": 0.9,
        "evaluations": [{"accuracy": a, "wall_seconds": float(i + 1)} for i, a in enumerate(acc)],
    }


def test_goals_are_ratios_of_times_per_step() -> None:
    results = [
        _result("local", 1.0, bw=0.0, tau=10),  # compute only: no link
        _result("overlap", 1.1), _result("sync", 2.2), _result("local", 1.65),
        _result("overlap", 1.21, p=0.1), _result("local", 2.475, p=0.1),
    ]
    (row,) = goals(results)
    assert row["vs_compute"].startswith("1.10")
    assert row["vs_own_compute"].startswith("1.25")
    assert row["sync_speedup"].startswith("2.00")
    assert row["local_speedup"].startswith("1.50")
    assert row["straggle_overlap"].startswith("1.10")
    assert row["straggle_local"].startswith("1.50")


def test_time_to_target_reads_the_first_evaluation_reaching_it() -> None:
    r = _result("overlap", 1.0, acc=(0.5, 0.76, 0.9))
    assert time_to(r, 0.75) == 2.0 and time_to(r, 0.95) is None
    (row,) = summarize([r], target=0.75)
    assert row["time_to_target_s"].startswith("2.00")


def test_the_table_names_a_real_links_rate_not_the_emulated_zero() -> None:
    """On the testbed the ranks emulate nothing (their ``link_mbps`` is 0): the table once
    showed 0 for a 37 Mbit/s link."""
    real = {**_result("overlap", 1.0), "ranks": [{"link_mbps": 0.0}], "link_bits_per_s": 37e6}
    assert summarize([real])[0]["link_mbps"] == "37 [37, 37]"
    assert summarize([_result("overlap", 1.0)])[0]["link_mbps"] == "50 [50, 50]"
