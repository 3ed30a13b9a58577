"""torch's own Local SGD as a baseline (issue S2): our :class:`LocalSGD` equals torch's
``PostLocalSGDOptimizer`` with a ``PeriodicModelAverager(period=tau, warmup_steps=tau-1)``
bit for bit, step by step, on 2 gloo ranks with plain SGD inside; so does our contender
:class:`TorchPostLocalSGD`, which drives torch's averager.

Exact by construction, not by luck: both flatten the same parameters into one buffer of the
same size, gloo sums it in the same order, and torch's divide-then-sum equals our
sum-then-divide exactly because W = 2 is a power of two (halving is exact). The model has no
floating-point buffers (torch's averager leaves them alone). With ``warmup_steps = 0`` torch
averages after steps 1, 1 + tau, ...: the trajectories differ, which shows the check can fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sgdlab.distributed.launch import launch

PROGRAMS = Path(__file__).with_name("rank_programs_torch_local.py")

pytestmark = pytest.mark.timeout(120)


TAUS = (1, 3)


@pytest.fixture(scope="module")
def launched() -> list[dict[int, Any]]:
    """One launch of two ranks runs every tau."""
    ranks: list[dict[int, Any]] = launch(
        2, f"{PROGRAMS}:against_torch", {"taus": TAUS, "steps": 7, "lr": 0.3},
        timeout_s=90.0, collective_timeout_s=30.0, grace_s=2.0)
    return ranks


@pytest.fixture(params=TAUS, ids=lambda t: f"tau{t}")
def traces(
    request: pytest.FixtureRequest, launched: list[dict[int, Any]],
) -> tuple[int, list[dict[str, Any]]]:
    return request.param, [r[request.param] for r in launched]


def test_local_sgd_equals_torchs_post_local_sgd_bit_for_bit(
    traces: tuple[int, list[dict[str, Any]]],
) -> None:
    tau, ranks = traces
    for r in ranks:
        for step, (ours, theirs, contender) in enumerate(zip(
                r["trace"]["ours"], r["trace"]["torch"], r["trace"]["contender"], strict=True)):
            assert torch.equal(ours, theirs), f"tau={tau}: differs from torch after step {step + 1}"
            assert torch.equal(contender, theirs), f"tau={tau}: contender, step {step + 1}"
    # After a round every rank holds the mean; between rounds the ranks differ.
    a, b = (r["trace"]["ours"] for r in ranks)
    for step in range(len(a)):
        assert torch.equal(a[step], b[step]) == ((step + 1) % tau == 0), step + 1


def test_torchs_default_warmup_averages_a_step_early(
    traces: tuple[int, list[dict[str, Any]]],
) -> None:
    tau, ranks = traces
    ours, early = ranks[0]["trace"]["ours"], ranks[0]["trace"]["torch_warmup0"]
    assert torch.equal(ours[0], early[0]) == (tau == 1)  # torch averages after step 1 either way
    assert all(torch.equal(x, y) for x, y in zip(ours, early, strict=True)) == (tau == 1)


def test_the_contender_counts_its_rounds_and_waits(
    traces: tuple[int, list[dict[str, Any]]],
) -> None:
    tau, ranks = traces
    assert all(r["rounds"] == 7 // tau for r in ranks)
    assert all(r["wait"] > 0 for r in ranks)
