"""The conformance table, on real gloo process groups at world sizes 2 and 4 (1 is in
``test_algorithms.py``, with no process group): every algorithm

1. starts from rank 0's model on every rank (the wrapper broadcasts it);
2. lowers the loss;
3. leaves all ranks with the same model after an average (and the same anchor or center);
4. round-trips its state_dict mid-run: reloaded into a fresh model and wrapper it continues
   bit for bit as the saved one did.

Plus the overlap check with sleep-modelled compute under injected latency, SyncSGD against one
process on the union of the ranks' batches, and the block gather used by mL-BFGS.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from rank_programs import HPARAMS, batch_indices, loss_of, synthetic_data

from sgdlab.distributed.comm import assign_blocks

pytestmark = pytest.mark.timeout(180)


CONFORMANCE = {"steps": 8, "save_at": 3}
SYNC_STEPS = 5
# An all-reduce "costs" 40 ms; a round computes 4 x 20 ms = 80 ms, so it fits under them.
HIDDEN = {"latency_ms": 40.0, "tau": 4, "compute_ms": 20.0, "steps": 24}


@pytest.fixture(scope="module")
def two_ranks(run_ranks: Any) -> list[dict[str, Any]]:
    """One launch of two ranks runs every two-rank program (see rank_programs.w2_suite)."""
    payload = {"conformance": CONFORMANCE, "sync_trajectory": {"steps": SYNC_STEPS},
               "hidden": HIDDEN}
    result: list[dict[str, Any]] = run_ranks(2, "w2_suite", payload)
    return result


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"W{w}")
def conformance(
    request: pytest.FixtureRequest, run_ranks: Any
) -> tuple[int, list[dict[str, Any]]]:
    world = request.param
    if world == 2:
        return world, [r["conformance"] for r in request.getfixturevalue("two_ranks")]
    return world, run_ranks(world, "conformance", CONFORMANCE)


@pytest.mark.parametrize("name", list(HPARAMS))
def test_every_algorithm_conforms(conformance: tuple[int, list[dict[str, Any]]], name: str) -> None:
    world, ranks = conformance
    results = [r[name] for r in ranks]
    first = results[0]
    for r in results[1:]:
        assert torch.equal(r["start"], first["start"]), "ranks did not start from one model"
    assert all(r["after"] < r["before"] - 0.02 for r in results), [
        (r["before"], r["after"]) for r in results]
    for r in results[1:]:
        assert torch.equal(r["synchronized"], first["synchronized"])
        if first["after_round"] is not None:
            assert torch.equal(r["after_round"], first["after_round"])
        if first["anchor"] is not None:
            assert torch.equal(r["anchor"], first["anchor"])
    for r in results:
        assert torch.equal(r["continued"], r["reloaded"]), "state_dict did not round-trip"


def test_sync_sgd_matches_one_process_on_the_union_of_batches(two_ranks: Any) -> None:
    world, steps, lr = 2, SYNC_STEPS, 0.3
    ranks = [r["sync_trajectory"] for r in two_ranks]
    x, y = synthetic_data()
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        # Equal batch sizes: the mean of the ranks' mean gradients is the union's mean gradient.
        idx = torch.cat([batch_indices(r, world, step) for r in range(world)])
        loss_of(model, x[idx], y[idx]).backward()
        opt.step()
        opt.zero_grad()
    expected = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    for got in ranks:
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_overlap_hides_an_injected_delay_shorter_than_its_local_steps(two_ranks: Any) -> None:
    ranks = [r["hidden"] for r in two_ranks]
    for stats in ranks:
        assert stats["overlap"]["hidden_fraction"] >= 0.8, stats["overlap"]
        assert stats["cocod"]["hidden_fraction"] >= 0.8, stats["cocod"]
        # Blocking Local SGD waits for every byte: nothing hidden, each round pays the delay.
        assert stats["local"]["hidden_fraction"] < 0.2, stats["local"]
        rounds = HIDDEN["steps"] // HIDDEN["tau"]
        assert stats["local"]["wait_seconds"] >= 0.9 * rounds * HIDDEN["latency_ms"] / 1e3
        for s in stats.values():
            assert s["wall_seconds"] == pytest.approx(s["compute_seconds"] + s["wait_seconds"])
        assert stats["overlap"]["wall_seconds"] < stats["local"]["wall_seconds"]


def test_all_gather_blocks_takes_each_block_from_its_owner(two_ranks: Any) -> None:
    world = 2
    ranks = [r["gather_blocks"] for r in two_ranks]
    for got in ranks:
        for i in range(5):
            owner = i % world
            assert torch.equal(got[f"b{i}"], torch.full((i + 1,), float(owner * 10 + i)))


@pytest.mark.parametrize("seed", range(5))
def test_assign_blocks_is_within_lpt_bound_of_the_best_split(seed: int) -> None:
    # Largest-first greedy on W machines is within 4/3 - 1/(3W) of the optimum (Graham, 1969);
    # the optimum comes from trying every assignment.
    sizes = torch.randint(1, 100, (7,), generator=torch.Generator().manual_seed(seed)).tolist()
    world = 2
    owners = assign_blocks([f"b{i}" for i in range(7)], sizes, world)
    load = [sum(sizes[i] for i in range(7) if owners[f"b{i}"] == r) for r in range(world)]
    best = min(
        max(sum(s for i, s in enumerate(sizes) if (mask >> i) & 1),
            sum(s for i, s in enumerate(sizes) if not (mask >> i) & 1))
        for mask in range(2**7)
    )
    assert max(load) <= (4 / 3 - 1 / (3 * world)) * best
    assert sorted(owners) == sorted(f"b{i}" for i in range(7))
    with pytest.raises(ValueError, match="Invalid world_size"):
        assign_blocks(["a"], [1], 0)
