"""The pairs probe: it records every pair's raw curvature ratio where the optimizer computes
it, and the counters, for each variant and learning rate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def probe(load_script: Callable[[str], ModuleType]) -> ModuleType:
    return load_script("probe_mlbfgs_pairs")


def test_probe_records_raw_ratios_and_counters(probe: ModuleType, tmp_path: Path) -> None:
    rows = probe.main(["--workload", "logreg-breast-cancer", "--epochs", "4", "--batches", "64",
                       "--evals", "1", "--eval-train", "100", "--target", "0.9",
                       "--variant", 'band|0.1|{"update_freq": 3}',
                       "--variant", 'open|0.1|{"update_freq": 3, "damping": [0.01, 1e4, 0]}',
                       "--db", str(tmp_path / "p.db"), "--out", str(tmp_path)])
    assert [r["variant"] for r in rows] == ["band", "open"]
    for r in rows:
        # 4 epochs of 455 samples at batch 64: 28 steps, pairs at steps 4, 7, ..., 28 (9) for
        # each of the two blocks (weight, bias)
        assert r["steps"] == 28 and r["pairs_formed"] == 18
        assert r["pairs_accepted"] + r["pairs_rejected"] == 18
        # The recorded ratios are the ones the optimizer damped on (delta 0: a pair is damped
        # exactly when its ratio lies outside the band).
        assert r["pairs_damped"] == r["below_band"] + r["above_band"]
        assert len(r["raw_ratio_q10_50_90"]) == 3
        assert sum(1 for phase in r["raw_ratio_by_phase"] if phase) >= 2
    band, opened = rows
    assert band["pairs_damped"] > opened["pairs_damped"]  # the wider band damps fewer
