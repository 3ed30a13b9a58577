"""Rank programs for the distributed mL-BFGS tests (``fn(rank, world_size, payload)``)."""

from __future__ import annotations

from typing import Any

import torch

from sgdlab.distributed import SyncSGD
from sgdlab.distributed.exchange import BlockExchange
from sgdlab.optim import MLBFGS

KW: dict[str, Any] = dict(
    lr=0.1, update_freq=2, history_size=3, pair_momentum=0.5, weight_decay=1e-2
)


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 7),
        torch.nn.Tanh(),
        torch.nn.Linear(7, 6),
        torch.nn.Tanh(),
        torch.nn.Linear(6, 3),
    ).double()


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, 5, generator=g, dtype=torch.float64), torch.randint(
        3, (64,), generator=g
    )


def _train(
    model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int, steps: int
) -> list[float]:
    x, y = _data(seed)
    losses = []
    for t in range(steps):
        idx = torch.arange(t * 16, t * 16 + 16) % 64
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def sharded_equals_single(rank: int, world_size: int, steps: int) -> dict[str, Any]:
    """Every rank steps on the same batches: the sharded step must equal the single-rank one."""
    sharded, single = _mlp(), _mlp()
    ex = BlockExchange()
    opt = MLBFGS(sharded.parameters(), exchange=ex, **KW)
    _train(sharded, opt, seed=0, steps=steps)
    _train(single, MLBFGS(single.parameters(), **KW), seed=0, steps=steps)
    same = all(
        torch.equal(a, b) for a, b in zip(sharded.parameters(), single.parameters(), strict=True)
    )
    return {"same": same, "owned": opt.diagnostics()["owned_blocks"], "calls": ex.calls}


def sharded_dtype_mix_equals_single(rank: int, world_size: int, steps: int) -> dict[str, Any]:
    """Blocks of float32, bfloat16 and float64 parameters: each rank must receive every block
    bit for bit in its owner's dtype, so that the sharded step equals the single-rank one."""

    def params() -> list[torch.nn.Parameter]:
        torch.manual_seed(0)
        dtypes = (torch.float32, torch.bfloat16, torch.float64, torch.float32, torch.bfloat16)
        shapes = [(6, 5), (6,), (4, 6), (4,), (3, 4)]
        return [torch.nn.Parameter(torch.randn(s, dtype=d))
                for s, d in zip(shapes, dtypes, strict=True)]

    def backward(ps: list[torch.nn.Parameter], step: int) -> None:
        g = torch.Generator().manual_seed(step)
        for p in ps:
            curvature = torch.linspace(0.01, 30.0, p.numel(), dtype=torch.float64)
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            p.grad = (curvature.reshape(p.shape) * p.detach().double() + 0.3 * noise).to(p.dtype)

    sharded, single = params(), params()
    ex = BlockExchange()
    opt = MLBFGS(sharded, exchange=ex, **KW)
    reference = MLBFGS(single, **KW)
    for step in range(steps):
        backward(sharded, step)
        backward(single, step)
        opt.step()
        reference.step()
    same = all(torch.equal(a, b) for a, b in zip(sharded, single, strict=True))
    return {"same": same, "owned": opt.diagnostics()["owned_blocks"], "calls": ex.calls}


def under_sync_sgd(rank: int, world_size: int, steps: int) -> dict[str, Any]:
    """Data parallel: each rank its own data, gradients averaged, blocks sharded."""
    model = _mlp()
    opt = SyncSGD(model, MLBFGS(model.parameters(), exchange=BlockExchange(), **KW))
    losses = _train(model, opt, seed=rank + 1, steps=steps)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"first": losses[0], "last": sum(losses[-4:]) / 4, "params": flat.tolist()}


def as_inner_of(rank: int, world_size: int, payload: dict[str, Any]) -> dict[str, Any]:
    """mL-BFGS (unsharded: ranks' gradients differ) inside a local-step algorithm."""
    from sgdlab.distributed import ALGORITHMS

    model = _mlp()
    inner = MLBFGS(model.parameters(), **KW)
    opt = ALGORITHMS[payload["algo"]](model, inner, tau=4, **payload.get("kw", {}))
    losses = _train(model, opt, seed=rank + 1, steps=payload["steps"])
    opt.synchronize()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {
        "first": losses[0],
        "last": sum(losses[-4:]) / 4,
        "params": flat.tolist(),
        "state": sorted(opt.state_dict()),
    }
