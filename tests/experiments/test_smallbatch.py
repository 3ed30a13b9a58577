from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sgdlab.cli import main
from sgdlab.errors import ConfigError
from sgdlab.experiments.smallbatch import lr_grid, refinements, split_workload
from sgdlab.experiments.smallbatch_plan import ABLATIONS, VARIANTS, Record, SmallBatchPlan
from sgdlab.experiments.smallbatch_report import loss_curves, rewrite_outputs, summarize
from sgdlab.run.store import ResultStore
from sgdlab.workloads import get_workload

WL = "logreg-breast-cancer"


def test_grid_is_sqrt10_spaced_and_scales_with_sqrt_batch() -> None:
    for family in ("sgd", "adam"):
        lo, mid, hi = lr_grid(family, 16)
        assert mid / lo == pytest.approx(10**0.5, rel=1e-2)
        assert hi / mid == pytest.approx(10**0.5, rel=1e-2)
        # Four times the batch, twice the rates.
        assert lr_grid(family, 64)[1] == pytest.approx(2 * mid, rel=1e-2)
    assert lr_grid("adam", 16)[1] == pytest.approx(lr_grid("sgd", 16)[1] / 10, rel=1e-2)
    # Refinements sit half-way (log scale) between the best rate and its grid neighbours.
    lo, mid, hi = lr_grid("sgd", 16)
    down, up = refinements(mid, 2)
    assert down == pytest.approx(math.sqrt(lo * mid), rel=1e-2)
    assert up == pytest.approx(math.sqrt(mid * hi), rel=1e-2)
    assert len(set(refinements(mid, 4))) == 4


def test_split_keeps_the_test_set_and_holds_out_validation() -> None:
    w = get_workload(WL)
    tuning, final = split_workload(w, 200, 100)
    assert final.num_train == tuning.num_train == 200
    assert torch.equal(final.x_test, w.x_test)  # type: ignore[arg-type]
    assert torch.equal(final.y_test, w.y_test)
    assert len(tuning.y_test) == 100
    rows = {tuple(r.tolist()) for r in w.x_train}  # type: ignore[union-attr]
    assert len(rows) == w.num_train  # distinct rows, so membership identifies samples
    train_rows = {tuple(r.tolist()) for r in final.x_train}  # type: ignore[union-attr]
    val_rows = {tuple(r.tolist()) for r in tuning.x_test}  # type: ignore[union-attr]
    assert not train_rows & val_rows and train_rows | val_rows <= rows
    again, _ = split_workload(w, 200, 100)  # a fixed seed: the same subset every time
    assert torch.equal(again.x_train, tuning.x_train)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exceed"):
        split_workload(w, w.num_train, 1)


def test_split_scores_on_a_fixed_test_subset_when_asked() -> None:
    w = get_workload(WL)
    _, final = split_workload(w, 200, 100, test=50)
    assert len(final.y_test) == 50 and final.train_eval_size == 50
    rows = [tuple(r.tolist()) for r in w.x_test]  # type: ignore[union-attr]
    picked = {tuple(r.tolist()) for r in final.x_test}  # type: ignore[union-attr]
    assert picked <= set(rows) and len(picked) == 50
    _, again = split_workload(w, 200, 100, test=50)
    assert torch.equal(again.x_test, final.x_test)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="test 100000 exceeds"):
        split_workload(w, 200, 100, test=100_000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"subset": 0}, "invalid subset"),
        ({"test": -1}, "invalid test"),
        ({"batch_sizes": (8, 10_000)}, "invalid batch size"),
        ({"lams": ()}, "invalid lams"),
        ({"lams": (-1.0,)}, "invalid lam"),
        ({"ablate_batch_sizes": (32,)}, "ablation batch size 32"),
    ],
)
def test_plan_rejects_bad_settings(change: dict[str, object], message: str) -> None:
    plan = SmallBatchPlan(**change)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        plan.validate()


def _rec(variant: str, seed: int, acc: float | None, role: str = "final") -> Record:
    return Record(
        WL,
        8,
        variant,
        role,
        seed,
        0.1,
        {},
        20,
        10,
        run_id=seed,
        accuracy=acc,
        train_loss=0.5,
        ms_per_step=1.0,
    )


def test_summary_is_mean_and_sample_std_with_the_gap_to_the_baseline() -> None:
    records = [
        _rec("sgd", 1, 0.90),
        _rec("sgd", 2, 0.92),
        _rec("prox-sgd", 1, 0.93),
        _rec("prox-sgd", 2, 0.95),
        _rec("prox-sgd λ=0", 1, 0.91),
        _rec("prox-sgd λ=0", 2, None),  # diverged: counted in runs, not in the mean
        _rec("sgd", 0, 0.99, role="tune"),  # tuning runs are not reported
    ]
    rows = {r["variant"]: r for r in summarize(records)}
    assert list(rows) == ["sgd", "prox-sgd", "prox-sgd λ=0"]
    assert rows["sgd"]["mean"] == pytest.approx(91.0)
    assert rows["sgd"]["std"] == pytest.approx(math.sqrt(2.0))  # ((1^2 + 1^2) / (2 - 1))^0.5
    # Standard error of the gap: sqrt(2/2 + 2/2), both groups having sample variance 2.
    assert rows["prox-sgd"]["vs baseline"] == f"+3.00 ± {math.sqrt(2.0):.2f}"
    assert rows["prox-sgd λ=0"]["runs"] == "1/2"
    assert rows["prox-sgd λ=0"]["vs baseline"] == "+0.00 ± 1.00"  # sqrt(2/2 + 0/1)


class _Samples:
    def samples(self, run_id: int) -> list[tuple[int, float, float]]:
        return [(s, 0.0, float(s) + run_id) for s in range(1, 21)]


def test_loss_curves_average_bins_then_seeds() -> None:
    # 10 steps an epoch, 2 bins an epoch: bins of 5 steps; losses step + run_id, runs 1 and 2.
    records = [_rec("sgd", 1, 0.9), _rec("sgd", 2, 0.9)]
    (xs, ys) = loss_curves(_Samples(), records, 2)[(WL, 8, "sgd")]  # type: ignore[arg-type]
    assert xs == pytest.approx([0.25, 0.75, 1.25, 1.75])
    assert ys == pytest.approx([3 + 1.5, 8 + 1.5, 13 + 1.5, 18 + 1.5])


@pytest.mark.slow  # about 7 s of CPU: 44 runs of the runner
def test_cli_end_to_end_on_a_tiny_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, out = tmp_path / "r.db", tmp_path / "sb"
    rc = main(
        [
            "bench",
            "smallbatch",
            "--workloads",
            WL,
            "--batch-sizes",
            "8,32",
            "--subset",
            "160",
            "--validation",
            "80",
            "--epochs",
            "1",
            "--seeds",
            "1",
            "--lams",
            "0.1",
            "--ablate-batch-sizes",
            "8",
            "--db",
            str(db),
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    blob = json.loads(Path(summary["records"]).read_text())
    records = blob["records"]

    # An equal budget: every variant tunes 3 grid rates + 1 more trial at each batch size.
    tune = Counter((r["batch_size"], r["variant"]) for r in records if r["role"] == "tune")
    assert tune == {(b, v): 4 for b in (8, 32) for v in VARIANTS}
    assert all(r["seed"] == 0 for r in records if r["role"] == "tune")
    assert all(r["seed"] == 1 for r in records if r["role"] != "tune")
    for r in records:
        if r["role"] == "tune" and r["variant"].startswith("prox") and r["options"].get("lam"):
            assert r["options"]["lam"] == 0.1 and r["lr"] in lr_grid(
                VARIANTS[r["variant"]][0], r["batch_size"]
            )
    # The final run uses the tuned settings, picked by validation accuracy.
    for b in (8, 32):
        for v in VARIANTS:
            trials = [
                r for r in records if (r["batch_size"], r["variant"], r["role"]) == (b, v, "tune")
            ]
            best = max(trials, key=lambda r: (r["accuracy"], -r["eval_loss"]))
            assert summary["chosen"][f"{WL} b={b} {v}"]["lr"] == best["lr"]

    rows = summary["rows"]
    expected = [(b, v) for b in (8, 32) for v in VARIANTS]
    expected += [(8, f"{v} {a}") for v in ("prox-sgd", "prox-adam") for a in ABLATIONS]
    assert sorted((r["batch"], r["variant"]) for r in rows) == sorted(expected)
    for row in rows:
        matching = [
            r
            for r in records
            if r["role"] != "tune"
            and (r["batch_size"], r["variant"]) == (row["batch"], row["variant"])
        ]
        assert row["mean"] == pytest.approx(statistics.fmean(100 * r["accuracy"] for r in matching))
    lam0 = [r for r in records if r["variant"].endswith("λ=0")]
    assert lam0 and all(r["options"]["lam"] == 0.0 for r in lam0)
    for r in lam0:  # the decay alone, at the prox variant's tuned rate
        assert r["lr"] == summary["chosen"][f"{WL} b=8 {r['variant'].split()[0]}"]["lr"]
    no_decay = [r for r in records if r["variant"].endswith("no decay")]
    assert no_decay and all(r["options"]["inner_decay"] == "none" for r in no_decay)
    for r in no_decay:  # the proximal term alone, at the baseline's tuned rate
        baseline = r["variant"].split()[0].removeprefix("prox-")
        assert r["lr"] == summary["chosen"][f"{WL} b=8 {baseline}"]["lr"]

    table, tuning_md = Path(summary["markdown"]).read_text().split("Tuning trials")
    assert table.count(f"| {WL} |") == len(rows)
    assert tuning_md.count(f"| {WL} |") == len(tune)  # a line per (batch, variant)
    (plot,) = summary["plots"]
    assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = Path(summary["markdown"]).read_text()
    assert rewrite_outputs(Path(summary["records"]), db)["rows"] == rows
    assert Path(summary["markdown"]).read_text() == before
    with ResultStore(db) as store:
        runs = store.runs(suite=summary["suite"])
        assert len(runs) == len(records)
        assert {r.config["workload_options"]["scored_on"] for r in runs} == {"validation", "test"}
        assert all(len(store.samples(r.id)) == r.steps for r in runs)  # one loss per step


def test_cli_rejects_a_bad_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "smallbatch", "--batch-sizes", "8,x"]) == 2
    assert "invalid batch sizes" in capsys.readouterr().err


@pytest.mark.slow  # about 3 s of CPU: 20 runs
def test_showcase_returns_a_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from sgdlab.experiments import smallbatch
    from sgdlab.report.sections import ShowcaseContext

    tiny = replace(smallbatch.SHOWCASE_PLAN, workloads=(WL,), subset=160, validation=80)
    monkeypatch.setattr(smallbatch, "SHOWCASE_PLAN", tiny)
    ctx = ShowcaseContext(
        db=tmp_path / "r.db", out=tmp_path, tag="t", quiet=True, console=Console(quiet=True)
    )
    section = smallbatch.smallbatch_showcase(ctx)
    assert [row["variant"] for row in section.rows] == list(VARIANTS)
    assert all(p.exists() for p in section.images) and len(section.images) == 2  # loss, accuracy
    assert smallbatch.SHOWCASE_PLAN.protocol == "authors"
