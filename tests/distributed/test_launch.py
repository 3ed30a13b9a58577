"""The launcher: results in rank order, the testbed's hooks (argv wrapper, per-rank
environment), and failures that end the run with a message instead of a hang."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest

from sgdlab.distributed.launch import RankFailure, free_port, launch

pytestmark = pytest.mark.timeout(120)


def test_results_come_back_in_rank_order_through_the_hooks(run_ranks: Any) -> None:
    def wrap(rank: int, argv: list[str]) -> list[str]:
        # What the testbed does with `ip netns exec <ns>`: run the same argv under a prefix.
        return ["env", f"SGDLAB_WRAPPED=ns{rank}", *argv]

    env = [{"SGDLAB_TEST_ENV": f"e{r}"} for r in range(2)]
    out = run_ranks(2, "echo", {"k": 1}, env_per_rank=env, wrap=wrap)
    assert [r["rank"] for r in out] == [0, 1]
    assert all(r["world_size"] == 2 and r["payload"] == {"k": 1} for r in out)
    assert [r["env"] for r in out] == ["e0", "e1"]
    assert [r["wrapped"] for r in out] == ["ns0", "ns1"]
    assert all(r["threads"] == 1 for r in out)


def test_a_rank_that_raises_fails_the_run_naming_it(run_ranks: Any) -> None:
    t0 = time.monotonic()
    with pytest.raises(RankFailure, match=r"rank 1 failed .*rank one broke on purpose"):
        run_ranks(2, "fail_on_rank_1", timeout_s=60)
    assert time.monotonic() - t0 < 40  # the grace period, not the run's timeout


@pytest.mark.slow
def test_a_hung_rank_is_stopped_at_the_timeout(run_ranks: Any) -> None:
    t0 = time.monotonic()
    # Rank 0 may not even have finished starting on a loaded machine; rank 1 never finishes.
    with pytest.raises(RankFailure, match=r"rank (0, )?1 still running after 5 s \(hung\?\)"):
        run_ranks(2, "hang_on_rank_1", timeout_s=5)
    assert time.monotonic() - t0 < 12


def test_bad_arguments_raise_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="Invalid world_size: 0"):
        launch(0, "m:f")
    with pytest.raises(ValueError, match="Invalid target"):
        launch(1, "no_function_here")
    with pytest.raises(ValueError, match="Invalid env_per_rank"):
        launch(2, "m:f", env_per_rank=[{}])


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert 0 < port < 65536 and sys.platform
