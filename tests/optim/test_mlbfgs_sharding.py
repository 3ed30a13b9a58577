"""mL-BFGS's blocks and their owners (issue S5): block policies, the LPT assignment, and the
sharded step (threads standing in for ranks) equal to the single-rank step bit for bit."""

from __future__ import annotations

import copy
import io
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlbfgs_toys import backward, batches, mlp
from torch import Tensor

from sgdlab.optim._blocks import build_blocks, module_blocks
from sgdlab.optim.mlbfgs import MLBFGS, DirectionExchange, assign_blocks

F64 = torch.float64


# -- blocks and their owners -------------------------------------------------------------------


def test_block_policies() -> None:
    model = mlp()  # (7x5, 7), (6x7, 6), (3x6, 3)
    params = list(model.parameters())
    assert build_blocks(params, "layer") == [[i] for i in range(6)]
    assert build_blocks(params, "size:48") == [[0, 1], [2, 3], [4, 5]]
    assert build_blocks(params, "size:25") == [[0], [1], [2], [3, 4], [5]]
    assert build_blocks(params, module_blocks(model)) == [[0, 1], [2, 3], [4, 5]]
    assert MLBFGS(params, blocks=module_blocks(model)).blocks == [[0, 1], [2, 3], [4, 5]]


def test_assign_blocks_by_hand() -> None:
    assert assign_blocks([5, 5, 5, 5], 2) == [0, 1, 0, 1]
    # largest first: 9 -> r0; 7 -> r1; 4 -> r1 (7 < 9); 3 -> r0 (9 < 11); 1 -> r1 (11 < 12)
    assert assign_blocks([3, 9, 1, 7, 4], 2) == [0, 0, 1, 1, 1]
    assert assign_blocks([], 3) == []
    assert assign_blocks([4, 2], 1) == [0, 0]
    with pytest.raises(ValueError, match="Invalid world_size: 0"):
        assign_blocks([1], 0)
    with pytest.raises(ValueError, match="Invalid block sizes"):
        assign_blocks([1, -2], 2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=30), st.integers(1, 8))
def test_assign_blocks_balances_within_the_largest_block(sizes: list[int], world: int) -> None:
    owners = assign_blocks(sizes, world)
    assert len(owners) == len(sizes) and all(0 <= r < world for r in owners)
    assert owners == assign_blocks(list(sizes), world)
    loads = [sum(s for s, r in zip(sizes, owners, strict=True) if r == k) for k in range(world)]
    assert max(loads) - min(loads) <= max(sizes, default=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=7), st.integers(2, 3))
def test_assign_blocks_within_graham_bound_of_optimum(sizes: list[int], world: int) -> None:
    owners = assign_blocks(sizes, world)
    makespan = max(
        sum(s for s, r in zip(sizes, owners, strict=True) if r == k) for k in range(world)
    )
    best = min(
        max(sum(s for s, r in zip(sizes, choice, strict=True) if r == k) for k in range(world))
        for choice in itertools.product(range(world), repeat=len(sizes))
    )
    assert makespan <= (4 / 3 - 1 / (3 * world)) * best + 1e-9


class ThreadExchange:
    """An in-process exchange: ranks are threads that meet at a barrier around a shared board."""

    def __init__(self, rank: int, world_size: int, board: dict, barrier: threading.Barrier):
        self.rank, self.world_size = rank, world_size
        self.board, self.barrier = board, barrier
        self.calls = 0

    def gather_directions(self, local: dict[int, Tensor], owners: list[int]) -> dict[int, Tensor]:
        assert all(owners[b] == self.rank for b in local)
        for b, d in local.items():
            # What a collective delivers: the owner's values, here in a view one element off
            # any alignment (as gloo's all_gather buffers are), where MKL's dot rounds otherwise.
            wire = torch.empty(d.numel() + 1, dtype=d.dtype)
            wire[1:] = d
            self.board[b] = wire[1:]
        self.barrier.wait(timeout=30)
        out = dict(self.board)
        self.barrier.wait(timeout=30)
        self.calls += 1
        return out


@pytest.mark.parametrize(("world", "history_dtype"),
                         [(2, None), (4, None), (4, torch.bfloat16)])
def test_sharded_step_equals_single_rank_step(world: int, history_dtype: Any) -> None:
    kwargs: dict[str, Any] = dict(
        update_freq=2, history_size=3, pair_momentum=0.5, weight_decay=1e-2,
        history_dtype=history_dtype,
    )
    reference = mlp(widths=(5, 7, 6, 6, 3))
    single = MLBFGS(reference.parameters(), **kwargs)
    board: dict[int, Tensor] = {}
    barrier = threading.Barrier(world)
    exchanges = [ThreadExchange(r, world, board, barrier) for r in range(world)]
    replicas = [copy.deepcopy(reference) for _ in range(world)]
    opts = [
        MLBFGS(m.parameters(), exchange=x, **kwargs)
        for m, x in zip(replicas, exchanges, strict=True)
    ]
    assert isinstance(exchanges[0], DirectionExchange)
    assert sorted(b for o in opts for b in o.diagnostics()["owned_blocks"]) == list(range(8))
    with ThreadPoolExecutor(world) as pool:
        for batch in batches(9, 12):
            backward(reference, batch)
            single.step()
            for m in replicas:
                backward(m, batch)
            list(pool.map(lambda o: o.step(), opts))  # re-raises a rank's exception
            for m in replicas:
                for a, b in zip(m.parameters(), reference.parameters(), strict=True):
                    assert torch.equal(a, b)
    assert exchanges[0].calls == 12  # every step: the owners' directions and their norms
    held_pairs = [s["mlbfgs_block"]["pairs"] for s in single.state.values() if "mlbfgs_block" in s]
    assert {t.dtype for t in held_pairs} == {history_dtype or F64}
    diags = [o.diagnostics() for o in opts]
    assert sum(d["pairs_accepted"] for d in diags) == single.diagnostics()["pairs_accepted"]
    assert all(d["direction_norm"] == single.diagnostics()["direction_norm"] for d in diags)
    for o, d in zip(opts, diags, strict=True):  # history is kept only by the owner
        held = [b for b, blk in enumerate(o.blocks) if "mlbfgs_block" in o.state[o._params[blk[0]]]]
        assert held == d["owned_blocks"]


def test_sharded_step_with_a_dtype_mix_equals_single_rank_step() -> None:
    # Float32 and float64 blocks, a rank owning one of each and the other a float64 one: the
    # pairs' decisions (damping, gamma) of a float32 block must not depend on what it is
    # stacked beside. The curvatures differ by 3000x along each block, so pairs are damped.
    def model() -> list[torch.nn.Parameter]:
        torch.manual_seed(0)
        dtypes = (torch.float32, F64, F64, torch.float32)
        return [torch.nn.Parameter(torch.randn(s, dtype=d))
                for s, d in zip([(6, 5), (6,), (4, 6), (4,)], dtypes, strict=True)]

    def backward_of(params: list[torch.nn.Parameter], step: int) -> None:
        g = torch.Generator().manual_seed(step)
        for p in params:
            curvature = torch.linspace(0.01, 30.0, p.numel(), dtype=F64).reshape(p.shape)
            noise = torch.randn(p.shape, generator=g, dtype=F64)
            p.grad = (curvature * p.detach().to(F64) + 0.3 * noise).to(p.dtype)

    kwargs: dict[str, Any] = dict(update_freq=2, history_size=3)
    reference = model()
    single = MLBFGS(reference, **kwargs)
    board: dict[int, Tensor] = {}
    barrier = threading.Barrier(2)
    replicas = [model() for _ in range(2)]
    opts = [MLBFGS(r, exchange=ThreadExchange(k, 2, board, barrier), **kwargs)
            for k, r in enumerate(replicas)]
    assert opts[0].owners == [0, 1, 1, 0]
    with ThreadPoolExecutor(2) as pool:
        for step in range(10):
            backward_of(reference, step)
            single.step()
            for r in replicas:
                backward_of(r, step)
            list(pool.map(lambda o: o.step(), opts))
            for r in replicas:
                assert all(torch.equal(a, b) for a, b in zip(r, reference, strict=True)), step
    assert single.diagnostics()["pairs_damped"] > 0


def test_single_rank_checkpoint_resumes_sharded_exactly() -> None:
    kwargs: dict[str, Any] = dict(update_freq=2, history_size=3)
    model = mlp(widths=(5, 7, 6, 6, 3))
    single = MLBFGS(model.parameters(), **kwargs)
    data = batches(10, 12)
    for batch in data[:6]:
        backward(model, batch)
        single.step()
    buffer = io.BytesIO()
    torch.save(single.state_dict(), buffer)
    board: dict[int, Tensor] = {}
    barrier = threading.Barrier(2)
    replicas = [copy.deepcopy(model) for _ in range(2)]
    opts = []
    for rank, replica in enumerate(replicas):
        opt = MLBFGS(
            replica.parameters(), exchange=ThreadExchange(rank, 2, board, barrier), **kwargs
        )
        buffer.seek(0)
        opt.load_state_dict(torch.load(buffer, weights_only=True))
        opts.append(opt)
    assert opts[0].diagnostics()["owned_blocks"] == list(opts[0].diagnostics()["history"])
    with ThreadPoolExecutor(2) as pool:
        for batch in data[6:]:
            for m in [model, *replicas]:
                backward(m, batch)
            single.step()
            list(pool.map(lambda o: o.step(), opts))
            for replica in replicas:
                for a, b in zip(replica.parameters(), model.parameters(), strict=True):
                    assert torch.equal(a, b)


def test_optim_does_not_import_torch_distributed() -> None:
    import ast
    import pathlib

    import sgdlab.optim

    for path in pathlib.Path(sgdlab.optim.__file__).parent.glob("*.py"):
        if path.name not in ("mlbfgs.py", "_blocks.py", "_curvature.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("torch.distributed") for a in node.names)
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("torch.distributed"), path


def test_a_sharded_optimizer_refuses_to_be_copied() -> None:
    barrier = threading.Barrier(1)
    opt = MLBFGS(mlp().parameters(), exchange=ThreadExchange(0, 1, {}, barrier))
    with pytest.raises(TypeError, match="cannot be copied or pickled"):
        copy.deepcopy(opt)


def test_bad_exchange_is_refused() -> None:
    with pytest.raises(ValueError, match="Invalid exchange: rank 2 of world_size 2"):
        MLBFGS(mlp().parameters(), exchange=ThreadExchange(2, 2, {}, threading.Barrier(1)))
