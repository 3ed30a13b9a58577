"""The long-horizon mL-BFGS benchmark script: its schedule reaches every optimizer through the
runner, and a tiny run produces its table, plot and goals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from sgdlab.optim.schedules import WarmupStepDecay
from sgdlab.run.config import TrainConfig
from sgdlab.run.store import ResultStore
from sgdlab.run.train import SingleRun
from sgdlab.workloads import get_workload


@pytest.fixture(scope="module")
def bench(load_script: Callable[[str], ModuleType]) -> ModuleType:
    return load_script("bench_mlbfgs_horizon")


def test_schedule_factor() -> None:
    f = WarmupStepDecay(warmup=5, milestones=(8, 12), gamma=0.5)
    factors = [f(t) for t in range(14)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert factors[7] == 1.0 and factors[8] == 0.5 and factors[12] == 0.25


@pytest.mark.parametrize("name", ["sgd-momentum", "sgd-momentum-clip", "mlbfgs",
                                  "mlbfgs-authors"])
def test_runner_applies_schedule_to_the_step(
    bench: ModuleType, name: str, tmp_path: Path
) -> None:
    """The runner steps the config's schedule and the optimizer follows
    ``param_groups[0]["lr"]``: decayed to 0 after its first step (a milestone at 1/5 of 6
    steps is step 1, gamma 0), a 6-step run ends exactly where a 1-step run does (a step at lr
    0 adds a zero), and the optimizer ends at the scheduled learning rate."""
    w = get_workload("logreg-breast-cancer")
    c = bench.HORIZON[name]

    def run(steps: int, **schedule: object) -> tuple[float, torch.Tensor]:
        config = TrainConfig(
            workload=w.name, optimizer=c.optimizer, lr=c.lr, steps=steps, batch_size=32,
            optimizer_options=dict(c.options), eval_every=steps, db=tmp_path / "r.db",
            out=tmp_path / "runs", threads=1, progress=False, **schedule,  # type: ignore[arg-type]
        )
        r = SingleRun(config, w)
        r.run()
        flat = torch.cat([p.detach().flatten() for p in r.model.parameters()])
        return r.opt.param_groups[0]["lr"], flat

    lr_one, one_step = run(1)
    lr_frozen, frozen = run(6, schedule="step", milestones=(0.2,), gamma=0.0)
    assert lr_one == pytest.approx(c.lr) and lr_frozen == 0.0
    assert torch.equal(frozen, one_step)
    _, moved = run(6)
    assert not torch.equal(moved, one_step)


def test_max_norm_reaches_mlbfgs(bench: ModuleType, tmp_path: Path) -> None:
    """``--max-norm`` sets the mlbfgs contender's clip (stored in its runs' configs); alone,
    mL-BFGS has no baseline to beat and the goals give no verdict."""
    summary = bench.main(["--workload", "logreg-breast-cancer", "--epochs", "1", "--batch", "64",
                          "--contenders", "mlbfgs", "--lr-factors", "1", "--seeds", "1",
                          "--evals", "2", "--max-norm", "none", "--db", str(tmp_path / "m.db"),
                          "--out", str(tmp_path)])
    assert summary["goals"]["epochs_goal_met"] is None
    with ResultStore(tmp_path / "m.db") as store:
        configs = [r.config for r in store.runs()]
    assert configs and all(c["optimizer_options"]["max_norm"] is None for c in configs)


def test_tiny_run(bench: ModuleType, tmp_path: Path) -> None:
    summary = bench.main(["--tiny", "--db", str(tmp_path / "h.db"), "--out", str(tmp_path)])
    assert [r["contender"] for r in summary["rows"]] == ["sgd-momentum", "mlbfgs"]
    assert all(r["runs"] == 2 for r in summary["rows"])
    assert Path(summary["plot"]).stat().st_size > 0
    assert "epochs to target" in (tmp_path / "summary.md").read_text()
    assert set(summary["goals"]) >= {"epochs_goal_met", "time_goal_met", "time_ratio"}


def test_harder_level_and_eval_subsets(bench: ModuleType, tmp_path: Path) -> None:
    """A harder level is read from the same runs' evaluations: never sooner than the target
    (level 0 at the evaluation before the first step, level 2 never); the evaluation subsets are
    the sizes asked for."""
    w = get_workload("logreg-breast-cancer")
    common = ["--tiny", "--eval-test", "50", "--eval-train", "40"]
    low = bench.main([*common, "--hard-target", "0", "--db", str(tmp_path / "a.db"),
                      "--out", str(tmp_path / "a")])
    assert (low["eval_test"], low["eval_train"]) == (50, 40) and len(w.y_test) > 50
    for r in low["rows"]:
        assert r["reached_hard"] == r["runs"]
        assert r["median_epochs_hard"] == 0.0  # the runner evaluates before the first step
    high = bench.main([*common, "--hard-target", "2", "--db", str(tmp_path / "b.db"),
                       "--out", str(tmp_path / "b")])
    assert all(r["reached_hard"] == 0 and r["median_epochs_hard"] is None for r in high["rows"])
    assert high["goals_hard"]["epochs_goal_met"] is False
    assert "epochs to hard" in (tmp_path / "b" / "summary.md").read_text()


def test_objective_target_is_the_tuning_criterion(bench: ModuleType, tmp_path: Path) -> None:
    """``--objective-target`` reads the first evaluation with the training objective at most
    the level (any level above the start: the evaluation before the first step; below zero:
    never), chooses each contender's configuration by it, and reports its goals."""
    common = ["--workload", "logreg-breast-cancer", "--epochs", "2", "--batch", "64",
              "--seeds", "1", "--evals", "2", "--contenders", "sgd-momentum,mlbfgs",
              "--lr-factors", "0.1,1", "--eval-train", "40"]
    high = bench.main([*common, "--objective-target", "1e9", "--db", str(tmp_path / "a.db"),
                       "--out", str(tmp_path / "a")])
    assert all(r["reached_objective"] == 1 and r["median_epochs_objective"] == 0.0
               for r in high["rows"])
    assert all(t["step_to_objective"] == 0 for t in high["tuning"])
    # Every lr ties at step 0: the lowest final objective chooses, as on the target.
    for name in ("sgd-momentum", "mlbfgs"):
        trials = [t for t in high["tuning"] if t["contender"] == name]
        assert next(t for t in trials if t["chosen"])["final_objective"] == min(
            t["final_objective"] for t in trials)
    low = bench.main([*common, "--objective-target", "-1", "--db", str(tmp_path / "b.db"),
                      "--out", str(tmp_path / "b")])
    assert all(r["reached_objective"] == 0 for r in low["rows"])
    assert low["goals_objective"]["epochs_goal_met"] is False
    assert "epochs to objective" in (tmp_path / "b" / "summary.md").read_text()


def test_sets_reach_mlbfgs_and_the_workload(bench: ModuleType, tmp_path: Path) -> None:
    """``--set KEY=VALUE`` sets an mlbfgs-contender hyperparameter (JSON: a list becomes a
    tuple, ``null`` None) and ``--set workload.KEY=VALUE`` a workload option; both are stored in
    the runs' configs, the workload option in every contender's, the optimizer's only in
    mL-BFGS's."""
    summary = bench.main(["--tiny", "--seeds", "1", "--set", "damping=[0.01,1000,0]",
                          "--set", "max_norm=null", "--set", "workload.l2=0.05",
                          "--db", str(tmp_path / "s.db"), "--out", str(tmp_path)])
    assert summary["workload_options"] == {"l2": "0.05"}
    with ResultStore(tmp_path / "s.db") as store:
        configs = {r.config["optimizer"]: r.config for r in store.runs()}
    assert set(configs) == {"sgd", "mlbfgs"}
    assert all(c["workload_options"] == {"l2": "0.05"} for c in configs.values())
    assert configs["mlbfgs"]["optimizer_options"]["damping"] == [0.01, 1000, 0]
    assert configs["mlbfgs"]["optimizer_options"]["max_norm"] is None
    assert "damping" not in configs["sgd"]["optimizer_options"]


@pytest.mark.parametrize(("item", "message"), [("damping", "--set takes key=value"),
                                             ("=3", "--set takes key=value"),
                                             ("workload.nope=1", "has no option nope")])
def test_bad_set_is_one_line_error(bench: ModuleType, tmp_path: Path, item: str, message: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        bench.main(["--tiny", "--set", item, "--db", str(tmp_path / "e.db"),
                    "--out", str(tmp_path)])
    assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "e.db").exists()


def test_grid_tunes_each_contender_over_its_options(bench: ModuleType, tmp_path: Path) -> None:
    """``--grid NAME:KEY=[...]`` multiplies NAME's seed-0 configurations (here 2 lr factors by
    2 values: 4 runs), records each one's options in the tuning, and runs the other seeds with
    the chosen options; a contender without a grid keeps its lr factors alone."""
    summary = bench.main(["--workload", "logreg-breast-cancer", "--epochs", "2", "--batch", "64",
                          "--seeds", "2", "--evals", "2",
                          "--contenders", "sgd-momentum-clip,mlbfgs",
                          "--lr-factors", "1,3", "--grid", "sgd-momentum-clip:max_norm=[0.01,5]",
                          "--grid", "mlbfgs:options=[{}, {\"damping\": [0.01, 1e4, 0]}]",
                          "--db", str(tmp_path / "g.db"), "--out", str(tmp_path)])
    tuning = summary["tuning"]
    clip = [t for t in tuning if t["contender"] == "sgd-momentum-clip"]
    assert sorted((t["grid"]["max_norm"], t["lr"]) for t in clip) == [
        (0.01, 0.1), (0.01, 0.3), (5, 0.1), (5, 0.3)]
    assert sorted(str(t["grid"]["options"]) for t in tuning if t["contender"] == "mlbfgs") == [
        "{'damping': (0.01, 10000.0, 0)}", "{'damping': (0.01, 10000.0, 0)}", "{}", "{}"]
    with ResultStore(tmp_path / "g.db") as store:
        runs = [r.config for r in store.runs() if r.config["optimizer"] == "clip-sgd"]
        dampings = {str(r.config["optimizer_options"].get("damping")) for r in store.runs()
                    if r.config["optimizer"] == "mlbfgs" and r.config["seed"] == 0}
    assert dampings == {"None", "[0.01, 10000.0, 0]"}
    assert len(runs) == 5  # 4 on seed 0, the chosen one on seed 1
    chosen = next(t for t in clip if t["chosen"])
    row = next(r for r in summary["rows"] if r["contender"] == "sgd-momentum-clip")
    assert row["grid"] == chosen["grid"] and row["lr"] == chosen["lr"]
    seed1 = next(r for r in runs if r["seed"] == 1)
    assert seed1["optimizer_options"]["max_norm"] == chosen["grid"]["max_norm"]
    assert seed1["lr"] == chosen["lr"]
    assert "Chosen options: sgd-momentum-clip max_norm=" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize(("item", "message"), [("mlbfgs:lr=0.1", "--grid takes NAME:KEY"),
                                             ("mlbfgs:momentum=[]", "--grid takes NAME:KEY"),
                                             ("mlbfgs:options=[1]", "list of JSON objects"),
                                             ("adamw:eps=[1e-8]", "not among the contenders")])
def test_bad_grid_is_one_line_error(bench: ModuleType, tmp_path: Path, item: str, message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        bench.main(["--tiny", "--grid", item, "--db", str(tmp_path / "e.db"),
                    "--out", str(tmp_path)])
    assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "e.db").exists()
