"""The report reads only the store: one scored table, the plots and one HTML page."""

from __future__ import annotations

from pathlib import Path

from sgdlab.report.html import build_report
from sgdlab.report.sections import Section
from sgdlab.run.config import TrainConfig
from sgdlab.run.store import ResultStore
from sgdlab.run.train import train


def test_two_seeds_make_one_scored_row_a_plot_and_a_page(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    for seed in (0, 1):
        train(TrainConfig(workload="logreg-breast-cancer", steps=20, eval_every=10, seed=seed,
                          db=db, out=tmp_path / f"run{seed}", progress=False, threads=1))
    section = Section("extra", text="a line", rows=[{"a": 1.0, "b": "x"}])
    with ResultStore(db, create=False) as store:
        summary = build_report(store, tmp_path / "out", quiet=True, sections=[section])
    (row,) = summary["results"]
    assert summary["runs"] == 2 and row["runs"] == 2
    assert row["workload"] == "logreg-breast-cancer" and row["optimizer"] == "sgd"
    assert summary["plots"] and all(Path(p).is_file() for p in summary["plots"])
    page = Path(summary["report"]).read_text()
    assert "<h2>extra</h2>" in page and "logreg-breast-cancer" in page
    assert summary["sections"] == [
        {"title": "extra", "text": "a line", "rows": [{"a": 1.0, "b": "x"}], "images": []}
    ]
