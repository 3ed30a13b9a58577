from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sgdlab.errors import ConfigError
from sgdlab.experiments.mlbfgs import (
    CONTENDERS,
    MlbfgsBenchConfig,
    WorkloadPlan,
    _counted,
    _goals,
    lr_grid,
    run_mlbfgs_bench,
    step_cost,
)
from sgdlab.run.store import ResultStore
from sgdlab.workloads import get_workload

WL = "logreg-breast-cancer"


def _config(tmp_path: Path, **kw: object) -> MlbfgsBenchConfig:
    base: dict[str, object] = dict(
        workloads=(WL,),
        contenders=("mlbfgs", "sgd-momentum"),
        seeds=2,
        batch_size=16,
        plans={WL: WorkloadPlan(40, 10, lr_factors=(1.0, 3.0), target=0.9)},
        cost_rounds=2,
        cost_steps=3,
        db=tmp_path / "r.db",
        out=tmp_path / "out",
    )
    base.update(kw)
    return MlbfgsBenchConfig(**base)  # type: ignore[arg-type]


def test_suite_runs_end_to_end_and_reports(tmp_path: Path) -> None:
    s = run_mlbfgs_bench(_config(tmp_path), quiet=True)
    rows = {r["contender"]: r for r in s["rows"]}
    assert set(rows) == {"mlbfgs", "sgd-momentum"}
    for name, r in rows.items():
        assert r["runs"] == 2 and r["steps"] == 40 and r["batch"] == 16
        assert r["lr"] in lr_grid(CONTENDERS[name].lr, (1.0, 3.0))
        assert r["evals_per_step"] == 1.0  # one closure call per step for these optimizers
    # Two grid runs per contender on seed 0, then one more seed at the chosen lr.
    chosen = [t for t in s["tuning"] if t["chosen"]]
    assert len(s["tuning"]) == 4 and len(chosen) == 2
    with ResultStore(tmp_path / "r.db") as store:
        runs = store.runs(suite=s["suite"])
        store_evals = {r.id: store.evaluations(r.id) for r in runs}
    assert len(runs) == 6 and all(r.config["threads"] == 1 for r in runs)
    for t in chosen:  # the chosen lr is the grid's best by (steps to target, final loss)
        grid = [g for g in s["tuning"] if g["contender"] == t["contender"]]
        key = [(g["step_to_target"] or math.inf, g["final_loss"]) for g in grid]
        assert key[grid.index(t)] == min(key)
    assert s["targets"] == {WL: 0.9}  # the plan's target replaces the workload's 0.95
    for r in runs:
        reached = next((e for e in store_evals[r.id] if e[4] >= 0.9), None)
        assert r.step_to_target == (None if reached is None else reached[0])
    goals = s["goals"][WL]
    assert goals["steps_goal_met"] == (goals["mlbfgs_steps"] < goals["best_baseline_steps"])
    (cost,) = s["step_cost"]
    assert cost["history"] == 10 and cost["update_freq"] == 10 and cost["history_held"] == 10
    for p in s["plots"]:
        assert Path(p).stat().st_size > 1000
    assert Path(s["report"]).exists()
    md = (tmp_path / "out" / "summary.md").read_text()
    assert f"### {WL}" in md and "| mlbfgs |" in md and "cost per step" in md
    json.dumps(s, default=str)


def test_lbfgs_counts_its_line_search_evaluations(tmp_path: Path) -> None:
    w = _counted(get_workload(WL))
    model = w.make_model(0)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=1, line_search_fn="strong_wolfe")
    idx = torch.arange(64)
    for _ in range(5):
        x, y = w.batch(idx)

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = w.loss(model, x, y)
            loss.backward()
            return loss

        opt.step(closure)
    assert len(w.evals) == 5
    # torch's own counter of function evaluations agrees with ours, step by step summed.
    assert sum(w.evals) == opt.state[opt._params[0]]["func_evals"]
    assert all(e >= 2 for e in w.evals)  # the first evaluation plus at least one trial


def test_lbfgs_gets_equal_samples(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        contenders=("mlbfgs", "lbfgs"),
        seeds=1,
        cost_rounds=0,
        plans={WL: WorkloadPlan(64, 16, lr_factors=(1.0,))},
    )
    s = run_mlbfgs_bench(cfg, quiet=True)
    rows = {r["contender"]: r for r in s["rows"]}
    # The breast-cancer set has fewer than 1024 training samples: the batch is clamped to it.
    n = get_workload(WL).num_train
    assert rows["lbfgs"]["batch"] == n
    assert rows["lbfgs"]["steps"] == max(1, round(64 * 16 / n))
    assert rows["lbfgs"]["evals_per_step"] >= 2


def test_goals_compare_medians_with_unreached_as_infinite() -> None:
    rows = [
        {"contender": "mlbfgs", "median_steps_to_target": 100.0, "median_time_to_target": 1.2},
        {"contender": "adam", "median_steps_to_target": 150.0, "median_time_to_target": 1.5},
        {"contender": "sgd", "median_steps_to_target": math.inf, "median_time_to_target": math.inf},
    ]
    g = _goals(rows)
    assert g["steps_goal_met"] and not g["wall_goal_met"]  # 1.2 > 0.7 * 1.5
    assert g["best_baseline"] == "adam" and g["time_ratio"] == pytest.approx(1.2 / 1.5)
    rows[0]["median_time_to_target"] = 1.0
    assert _goals(rows)["wall_goal_met"]  # 1.0 <= 1.05
    rows[0]["median_steps_to_target"] = math.inf
    assert not _goals(rows)["steps_goal_met"]


def test_step_cost_interleaves_and_fills_the_history() -> None:
    c = step_cost(
        get_workload(WL), batch_size=8, rounds=3, steps_per_round=2, history=3, update_freq=2
    )
    assert c["history_held"] == 3 and c["ratio"].n == 3
    assert c["ratio"].low <= c["ratio"].median <= c["ratio"].high
    with pytest.raises(ConfigError, match="invalid cost"):
        step_cost(get_workload(WL), 8, rounds=0, steps_per_round=2)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(contenders=("sgd-momentum", "adam")), "mlbfgs must be one of them"),
        (dict(contenders=("mlbfgs", "nope")), "unknown contender 'nope'"),
        (dict(seeds=0), "invalid seeds: 0"),
        (dict(steps_scale=0.0), "invalid steps-scale"),
        (dict(plans={WL: WorkloadPlan(10, 5, lr_factors=())}), "invalid lr factors"),
    ],
)
def test_bad_configuration_is_one_line(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_mlbfgs_bench(_config(tmp_path, **kw), quiet=True)
    assert not (tmp_path / "r.db").exists()


@pytest.mark.slow
def test_quick_showcase_is_a_section_with_a_plot(tmp_path: Path) -> None:
    from rich.console import Console

    from sgdlab.experiments.mlbfgs import quick_showcase
    from sgdlab.experiments.suites import SHOWCASES
    from sgdlab.report.sections import ShowcaseContext

    assert "sgdlab.experiments.mlbfgs:quick_showcase" in SHOWCASES["quick"]
    ctx = ShowcaseContext(tmp_path / "r.db", tmp_path, "quick-x", True, Console(quiet=True))
    section = quick_showcase(ctx)
    assert [r["contender"] for r in section.rows] == ["mlbfgs", "sgd-momentum", "adam"]
    assert section.images[0].stat().st_size > 1000
    with ResultStore(tmp_path / "r.db") as store:
        assert len(store.runs(suite="quick-x-mlbfgs")) == 3
        assert store.runs(suite="quick-x") == []  # the quick suite's own table stays its own
