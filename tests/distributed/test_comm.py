"""The communication layer's pure parts, without processes: the delay model, handles,
stragglers, and the one-rank (no process group) behaviour."""

from __future__ import annotations

import time

import pytest
import torch

from sgdlab.distributed.comm import Comm, Handle, Injection


def test_delay_is_latency_plus_bytes_over_bandwidth() -> None:
    inj = Injection(bandwidth_mbps=8.0, latency_ms=20.0)
    # 1e6 bytes = 8e6 bits at 8e6 bit/s: one second, plus 20 ms.
    assert inj.delay_seconds(1_000_000) == pytest.approx(1.02)
    assert Injection().delay_seconds(10**9) == 0.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"bandwidth_mbps": -1.0}, "Invalid bandwidth_mbps: -1.0"),
    ({"latency_ms": float("nan")}, "Invalid latency_ms: nan"),
    ({"straggler_prob": 1.5}, "Invalid straggler_prob: 1.5"),
    ({"straggler_slowdown": 0.5}, "Invalid straggler_slowdown: 0.5"),
])
def test_bad_injection_raises(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Injection(**kwargs)


def _handle(delay: float) -> Handle:
    t = torch.arange(4.0)
    return Handle(t.clone(), [t], 1, None, time.perf_counter(), delay)


def test_a_delay_spent_computing_costs_no_wait() -> None:
    h = _handle(0.05)
    assert not h.is_completed()
    time.sleep(0.06)  # computation while the collective "travels"
    assert h.is_completed()
    assert torch.equal(h.wait()[0], torch.arange(4.0))
    assert h.wait_seconds < 0.01 and h.comm_seconds == pytest.approx(0.05, abs=0.01)


def test_an_early_wait_blocks_for_the_rest_of_the_delay() -> None:
    h = _handle(0.2)
    time.sleep(0.02)
    left = h.issued + 0.2 - time.perf_counter()  # what is left of the delay (machine load aside)
    h.wait()
    assert time.perf_counter() >= h.issued + 0.2
    assert h.wait_seconds >= left - 1e-3 and h.wait_seconds < 0.2
    with pytest.raises(RuntimeError, match="already waited"):
        h.wait()


def test_one_rank_without_a_process_group() -> None:
    comm = Comm(Injection(latency_ms=500.0))
    assert (comm.rank, comm.world_size, comm.distributed) == (0, 1, False)
    t0 = time.perf_counter()
    means = comm.average([torch.ones(2, 2), torch.zeros(3)]).wait()
    assert time.perf_counter() - t0 < 0.1  # nothing to send: no delay
    assert [m.shape for m in means] == [torch.Size([2, 2]), torch.Size([3])]
    blocks = comm.all_gather_blocks({"a": torch.ones(2)}, {"a": 0})
    assert torch.equal(blocks["a"], torch.ones(2))
    with pytest.raises(ValueError, match="Invalid owner"):
        comm.all_gather_blocks({"a": torch.ones(2)}, {"a": 1})
    with pytest.raises(ValueError, match="Invalid tensors"):
        comm.average([])


def test_stragglers_are_seeded_and_as_frequent_as_asked() -> None:
    def pattern(seed: int) -> list[bool]:
        comm = Comm(Injection(straggler_prob=0.1, straggler_slowdown=1.0 + 1e-9, seed=seed))
        return [comm.straggle(1e-3) > 0 for _ in range(4000)]

    a, b = pattern(1), pattern(1)
    assert a == b and a != pattern(2)
    # Binomial(4000, 0.1): mean 400, sd 19; six sd either side.
    assert 285 < sum(a) < 515


def test_a_straggling_step_takes_slowdown_times_as_long() -> None:
    comm = Comm(Injection(straggler_prob=1.0, straggler_slowdown=3.0))
    t0 = time.perf_counter()
    extra = comm.straggle(0.02)
    assert extra == pytest.approx(0.04)
    assert time.perf_counter() - t0 >= 0.04
