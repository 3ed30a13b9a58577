"""``sgdlab bench smallbatch --protocol authors``: the plan, the paired statistics, one tiny run."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from sgdlab.cli import main
from sgdlab.experiments.smallbatch import lr_grid, mean_decay
from sgdlab.experiments.smallbatch_plan import (
    AUTHORS_PLAN,
    AUTHORS_PROX_OPTIONS,
    SmallBatchPlan,
    with_protocol_defaults,
)
from sgdlab.experiments.smallbatch_stats import paired
from sgdlab.run.store import ResultStore

WL = "logreg-breast-cancer"


def test_authors_defaults_fill_only_what_was_not_given() -> None:
    plan = with_protocol_defaults(SmallBatchPlan(protocol="authors", epochs=4), {"epochs"})
    assert plan.epochs == 4
    assert plan.batch_sizes == AUTHORS_PLAN.batch_sizes == (4, 8, 16)
    assert plan.ablate_batch_sizes == plan.batch_sizes
    assert plan.seeds >= 5 and set(plan.workloads) == {"mlp-mnist", "cnn-fmnist"}
    # Given equal to the quick default, a setting still stands.
    plan = with_protocol_defaults(SmallBatchPlan(protocol="authors"), {"seeds"})
    assert plan.seeds == SmallBatchPlan().seeds
    quick = SmallBatchPlan(epochs=7)
    assert with_protocol_defaults(quick, set()) is quick


def test_mean_decay_is_the_mean_of_the_harmonic_factor() -> None:
    assert mean_decay(1, None) == 1.0
    assert mean_decay(4, None) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # An epoch of 6 steps with windows of 4: positions 0 1 2 3 0 1.
    assert mean_decay(4, 6) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 + 1 / 2) / 6)


def test_paired_difference_matches_its_definition() -> None:
    a = {1: 90.0, 2: 91.0, 3: 93.5, 4: 92.0, 9: 50.0}  # seed 9 has no partner: left out
    b = {1: 89.0, 2: 91.5, 3: 92.0, 4: 91.0}
    row = paired("a", a, "b", b)
    diffs = [1.0, -0.5, 1.5, 1.0]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    assert row["n"] == 4 and row["diff"] == pytest.approx(mean)
    assert row["se"] == pytest.approx(sd / 2)
    assert row["t"] == pytest.approx(mean / (sd / 2))
    assert 0 < row["p"] < 1
    assert row["≥ 2 se"] is (mean >= 2 * sd / 2)
    assert paired("b", b, "a", a)["≥ 2 se"] is False  # a loss is never a gain
    assert math.isnan(paired("a", {1: 1.0}, "b", {1: 0.0})["diff"])  # one pair: no spread


@pytest.mark.slow  # about 6 s of CPU: 32 runs of the runner
def test_cli_runs_the_authors_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, out = tmp_path / "r.db", tmp_path / "sb"
    rc = main(["bench", "smallbatch", "--protocol", "authors", "--workloads", WL,
               "--batch-sizes", "32", "--subset", "160", "--validation", "80", "--epochs", "2",
               "--seeds", "2", "--lams", "0.3", "--db", str(db), "--out", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = json.loads(Path(summary["records"]).read_text())["records"]
    spe = 160 // 32
    tune = [(r["variant"], r["lr"]) for r in records if r["role"] == "tune"]
    assert sorted(Counter(v for v, _ in tune).values()) == [4] * 4  # an equal budget
    for variant in ("sgd", "prox-sgd", "adam", "prox-adam"):
        grid = lr_grid("adam" if "adam" in variant else "sgd", 32)
        rates = [lr for v, lr in tune if v == variant]
        assert rates[:3] == list(grid)
        if not grid[0] <= rates[3] <= grid[-1]:  # past an edge: one grid step
            past = grid[0] / 10**0.5 if rates[3] < grid[0] else grid[-1] * 10**0.5
            assert rates[3] == pytest.approx(past, rel=1e-2)
    for r in records:
        assert r["options"]["weight_decay"] == 1e-4
        if r["variant"].startswith("prox") and "mean lr" not in r["variant"]:
            assert r["options"]["lam_schedule"] == AUTHORS_PROX_OPTIONS["lam_schedule"]
            assert r["options"]["epoch_steps"] == spe
    chosen = summary["chosen"]
    for prox in ("prox-sgd", "prox-adam"):
        mean = [r for r in records if r["variant"] == f"{prox} mean lr"]
        lam0 = [r for r in records if r["variant"] == f"{prox} λ=0"]
        assert len(mean) == len(lam0) == 2
        lr = chosen[f"{WL} b=32 {prox}"]["lr"]
        window = 10
        assert all(r["lr"] == pytest.approx(lr * mean_decay(window, spe), rel=1e-2) for r in mean)
        assert all("lam" not in r["options"] for r in mean)  # the baseline optimizer
        assert all(r["options"]["lam"] == 0.0 and r["lr"] == lr for r in lam0)
    against = {(p["contender"], p["against"]) for p in summary["paired"]}
    assert ("prox-sgd", "adam") in against and ("prox-adam", "prox-adam mean lr") in against
    assert all(p["n"] == 2 for p in summary["paired"])
    assert any(Path(p).name == f"smallbatch-acc-{WL}.png" for p in summary["plots"])
    with ResultStore(db) as store:
        runs = {r.id: r for r in store.runs(suite=summary["suite"])}
        for r in records:
            config = runs[r["run_id"]].config
            assert config["schedule"] == "step"
            # final runs are scored every epoch (the curves), tuning runs at the end only
            steps = [e[0] for e in store.evaluations(r["run_id"])]
            assert steps == ([0, spe, 2 * spe] if r["role"] != "tune" else [0, 2 * spe])
    registry = {runs[r["run_id"]].optimizer for r in records if r["variant"].endswith("mean lr")}
    assert registry == {"sgd", "adam"}


def test_step_schedule_decays_at_half_and_three_quarters(tmp_path: Path) -> None:
    from sgdlab.run.config import TrainConfig
    from sgdlab.run.train import train

    config = TrainConfig(workload=WL, optimizer="prox-sgd", lr=0.2, steps=8, batch_size=16,
                         schedule="step", log_every=1, db=tmp_path / "r.db", out=tmp_path / "o",
                         progress=False, optimizer_options={"lam_schedule": "authors"})
    result = train(config)
    events = [json.loads(line) for line in (Path(result.out_dir) / "events.jsonl").open()]
    # the lr each step ran at is the one logged after the step before it
    logged = [e["lr"] for e in events if e.get("event") == "step"]
    ran_at = [0.2, *logged[:-1]]
    assert ran_at == pytest.approx([0.2] * 4 + [0.02] * 2 + [0.002] * 2)
