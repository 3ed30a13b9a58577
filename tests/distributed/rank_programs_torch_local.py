"""Rank programs of ``test_overlap_torch_baseline.py``: our Local SGD beside torch's own
``PostLocalSGDOptimizer`` + ``PeriodicModelAverager``, in the same processes.

Not a test module: the test names these functions by file path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
from torch.distributed.optim import PostLocalSGDOptimizer

from sgdlab.distributed import LocalSGD, TorchPostLocalSGD


def _model() -> torch.nn.Module:
    """No floating-point buffers: torch's averager averages parameters only."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)  # every rank its own data
    return torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def against_torch(rank: int, world_size: int, payload: dict[str, Any]) -> dict[int, Any]:
    """For each tau of the payload: each variant's parameters after every step."""
    return {tau: _one_tau(rank, tau, payload["steps"], payload["lr"]) for tau in payload["taus"]}


def _one_tau(rank: int, tau: int, steps: int, lr: float) -> dict[str, Any]:
    models = {name: _model() for name in ("ours", "contender", "torch", "torch_warmup0")}
    opts: dict[str, Any] = {
        "ours": LocalSGD(models["ours"], torch.optim.SGD(models["ours"].parameters(), lr=lr),
                         tau=tau),
        "contender": TorchPostLocalSGD(
            models["contender"], torch.optim.SGD(models["contender"].parameters(), lr=lr),
            tau=tau),
    }
    for name, warmup in (("torch", tau - 1), ("torch_warmup0", 0)):
        opts[name] = PostLocalSGDOptimizer(
            torch.optim.SGD(models[name].parameters(), lr=lr),
            PeriodicModelAverager(period=tau, warmup_steps=warmup))
    trace: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    for step in range(steps):
        x, y = _batch(rank, step)
        for name, model in models.items():  # every rank runs the variants in this order
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opts[name].step()
            opts[name].zero_grad()
            trace[name].append(_flat(model))
    return {"trace": trace, "rounds": len(opts["contender"].rounds),
            "wait": opts["contender"].summary()["wait_seconds"]}
