"""mL-BFGS with its blocks shared out across gloo ranks (issue S5): the sharded step equals the
single-rank step at world sizes 1, 2 and 4, and it trains under SyncSGD data parallelism."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgdlab.distributed.launch import launch

PROGRAMS = Path(__file__).with_name("rank_programs_mlbfgs.py")


def _run(world: int, program: str, steps: int) -> list[dict[str, object]]:
    return launch(
        world,
        f"{PROGRAMS}:{program}",
        steps,
        timeout_s=90.0,
        collective_timeout_s=30.0,
        grace_s=2.0,
    )


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sharded_step_equals_single_rank_step(world: int) -> None:
    results = _run(world, "sharded_equals_single", steps=12)
    assert all(r["same"] for r in results), results
    owned = [list(r["owned"]) for r in results]  # type: ignore[call-overload]
    # Three Linear layers: six parameter tensors (blocks), each owned by exactly one rank.
    assert sorted(b for blocks in owned for b in blocks) == list(range(6))
    if world > 1:
        assert all(r["calls"] > 0 for r in results)
        assert max(len(blocks) for blocks in owned) < 6  # the work really is shared out


def test_sharded_step_with_a_dtype_mix_equals_single_rank_step() -> None:
    # float32, bfloat16 and float64 blocks: the exchange's one buffer must not round a block
    # to another block's dtype, nor hand it back in another dtype than its owner's.
    results = _run(2, "sharded_dtype_mix_equals_single", steps=10)
    assert all(r["same"] for r in results), results
    assert all(0 < len(r["owned"]) < 5 for r in results)


def test_trains_under_sync_sgd() -> None:
    results = _run(2, "under_sync_sgd", steps=40)
    assert results[0]["params"] == results[1]["params"]  # one model on every rank
    assert all(r["last"] < r["first"] for r in results)


@pytest.mark.parametrize(("algo", "kw"), [("local", {}), ("overlap", {"alpha": 0.6})])
def test_is_the_inner_optimizer_of_local_step_algorithms(algo: str, kw: dict[str, float]) -> None:
    results = launch(
        2,
        f"{PROGRAMS}:as_inner_of",
        {"algo": algo, "kw": kw, "steps": 40},
        timeout_s=90.0,
        collective_timeout_s=30.0,
        grace_s=2.0,
    )
    assert all(r["last"] < r["first"] for r in results)
    assert results[0]["params"] == results[1]["params"]  # synchronize(): one model on all ranks
