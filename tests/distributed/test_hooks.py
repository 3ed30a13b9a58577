"""Hooks on the distributed algorithms: one user step is one step, whatever is inside.

Each algorithm wraps an inner optimizer, possibly itself a wrapper (the proximal method). The
global step hooks and the algorithm's own fire once per ``step()``, handed the algorithm; each
inner optimizer's own hooks fire once per step too, handed that optimizer. The state-dict hooks
registered on the algorithm run around its ``state_dict`` and ``load_state_dict``. All of it in
one process with no process group (rank 0 of 1).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from sgdlab.distributed import ALGORITHMS
from sgdlab.optim import make_proximal

TAU = {"sync": {}, "local": {"tau": 2}, "overlap": {"tau": 2}, "easgd": {"tau": 2},
       "cocod": {"tau": 2}, "torch-local": {"tau": 2}}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def _inner(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    if kind == "proximal":
        return make_proximal("sgd", model.parameters(), lam=0.1, window=3, lr=0.05)
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def _record(calls: list[tuple[str, Any]], name: str) -> Any:
    return lambda optimizer, args, kwargs: calls.append((name, optimizer))


@pytest.mark.parametrize("kind", ["sgd", "proximal"])
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_one_step_fires_each_hook_once(name: str, kind: str) -> None:
    model = _model()
    inner = _inner(model, kind)
    opt = ALGORITHMS[name](model, inner, **TAU[name])
    calls: list[tuple[str, Any]] = []
    handles = [register_optimizer_step_pre_hook(_record(calls, "global pre")),
               register_optimizer_step_post_hook(_record(calls, "global post")),
               opt.register_step_pre_hook(_record(calls, "pre")),
               opt.register_step_post_hook(_record(calls, "post")),
               inner.register_step_pre_hook(_record(calls, "inner pre")),
               inner.register_step_post_hook(_record(calls, "inner post"))]
    x = torch.randn(8, 3)
    try:
        for step in range(5):  # rounds after steps 2 and 4 (1 to 5 for sync)
            if step % 2:
                def closure() -> torch.Tensor:
                    opt.zero_grad()
                    loss = model(x).pow(2).mean()
                    loss.backward()
                    return loss

                opt.step(closure)
            else:
                opt.zero_grad()
                model(x).pow(2).mean().backward()
                opt.step()
    finally:
        for handle in handles:
            handle.remove()
    once = ["global pre", "pre", "inner pre", "inner post", "post", "global post"]
    assert [n for n, _ in calls] == once * 5
    for n, optimizer in calls:
        assert optimizer is (inner if n.startswith("inner") else opt)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_state_dict_hooks_run_on_the_algorithm(name: str) -> None:
    model = _model()
    opt = ALGORITHMS[name](model, _inner(model, "sgd"), **TAU[name])
    model(torch.randn(8, 3)).sum().backward()
    opt.step()
    calls: list[str] = []
    opt.register_state_dict_pre_hook(lambda optimizer: calls.append("pre"))
    opt.register_state_dict_post_hook(lambda optimizer, sd: {**sd, "tag": calls.append("post")})
    opt.register_load_state_dict_pre_hook(
        lambda optimizer, sd: calls.append("load pre") or {k: v for k, v in sd.items()
                                                           if k != "tag"})
    opt.register_load_state_dict_post_hook(lambda optimizer: calls.append("load post"))
    state_dict = opt.state_dict()
    assert "tag" in state_dict and "cooperative" in state_dict
    opt.load_state_dict(state_dict)
    assert calls == ["pre", "post", "load pre", "load post"]


def test_a_group_outside_the_model_is_refused() -> None:
    model = _model()
    first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
    opt = ALGORITHMS["sync"](model, torch.optim.SGD(first, lr=0.1))
    with pytest.raises(ValueError, match="Invalid param_group: it holds parameters not in "
                                         "the model"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})
    opt.add_param_group({"params": rest, "lr": 0.01})  # the model's own: the inner takes them
    assert opt.inner.param_groups[1]["lr"] == 0.01 and opt.param_groups is opt.inner.param_groups
    model(torch.randn(8, 3)).pow(2).mean().backward()
    before = [p.detach().clone() for p in rest]
    opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(rest, before, strict=True))
