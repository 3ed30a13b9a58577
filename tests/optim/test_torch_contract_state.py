"""sgdlab's optimizers through PyTorch's optimizer contract (part 3: state and hooks).

The table and the reasoning are in ``test_torch_contract.py``. Here, after torch's
``test_state_dict_deterministic`` (a state dict taken mid-run and loaded into a fresh optimizer
continues bit for bit, here through ``torch.save`` and ``torch.load(weights_only=True)`` too,
and loading it leaves it unchanged), ``test_can_load_older_state_dict``,
``test_load_nontensor_step``, ``test_deepcopy_copies_all_public_attrs``, the state-dict format
(``state`` and ``param_groups`` at the top, as tools that index it expect), pickling, and the
step and state-dict hooks of ``test_step_pre_hook``, ``test_step_post_hook``,
``test_step_all_hooks`` and ``test_state_dict_pre_hook`` and friends: one user step fires each
global and each of the optimizer's own hooks once.
"""

from __future__ import annotations

import copy
import io
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.testing._internal.common_optimizers import OptimizerInfo

sys.path.insert(0, str(Path(__file__).parent))  # the shared table (pytest's importlib mode)
from test_torch_contract import (  # noqa: E402
    build,
    cases,
    closure_for,
    quadratic_params,
    settings,
)

# Flags torch added to its optimizers after their first release: an older checkpoint lacks them.
NEWER_FLAGS = ("maximize", "foreach", "fused", "differentiable", "capturable")


def assert_same(a: Any, b: Any, where: str = "state_dict") -> None:
    """Nested dicts, lists and tensors equal exactly (tensors bit for bit)."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _primed(info: OptimizerInfo, kwargs: dict[str, Any], device: str, dtype: torch.dtype,
            steps: int = 7) -> tuple[torch.optim.Optimizer, list[Tensor], Tensor]:
    """An optimizer that took ``steps`` steps: mid-window, mid-round, past its warm-up."""
    params, x = quadratic_params(device, dtype)
    opt = build(info, params, kwargs)
    closure = closure_for(opt, params, x)
    for _ in range(steps):
        opt.step(closure)
    return opt, params, x


def _clone_params(params: list[Tensor]) -> list[Tensor]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def _through_disk(state_dict: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _map_states(state_dict: dict[str, Any], fn: Any) -> None:
    """Apply ``fn`` to every per-parameter state of the dict and of any optimizer it nests."""
    for value in state_dict.get("state", {}).values():
        if isinstance(value, dict):
            fn(value)
    for value in state_dict.values():
        if isinstance(value, dict) and "param_groups" in value:
            _map_states(value, fn)


def _groups(state_dict: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The top-level param_groups and those of any optimizer the dict nests."""
    found = [state_dict["param_groups"]]
    for value in state_dict.values():
        if isinstance(value, dict) and "param_groups" in value:
            found += _groups(value)
    return found


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_state_dict_has_torchs_format(info: OptimizerInfo, dtype: torch.dtype,
                                      device: str) -> None:
    for setting in settings(info, device, dtype):
        opt, params, _ = _primed(info, setting.kwargs, device, dtype)
        state_dict = opt.state_dict()
        assert {"state", "param_groups"} <= set(state_dict), setting.desc
        groups = state_dict["param_groups"]
        assert [len(g["params"]) for g in groups] == [len(g["params"]) for g in opt.param_groups]
        indices = [i for g in groups for i in g["params"]]
        assert indices == list(range(len(params))), setting.desc
        for group in groups:
            assert "lr" in group and all(isinstance(i, int) for i in group["params"])
        for key in state_dict["state"]:
            assert not isinstance(key, Tensor) and (not isinstance(key, int) or key in indices)


@pytest.mark.parametrize("via", ["deepcopy", "disk"])
@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_state_dict_round_trip_continues_bit_for_bit(info: OptimizerInfo, dtype: torch.dtype,
                                                     device: str, via: str) -> None:
    for setting in settings(info, device, dtype):
        opt, params, x = _primed(info, setting.kwargs, device, dtype)
        twin_params = _clone_params(params)
        twin = build(info, twin_params, setting.kwargs)
        saved = copy.deepcopy(opt.state_dict())
        given = copy.deepcopy(saved) if via == "deepcopy" else _through_disk(saved)
        twin.load_state_dict(given)
        assert_same(given, saved if via == "deepcopy" else _through_disk(saved),
                    "the loaded dict")  # loading leaves the dict as it was
        closure, twin_closure = closure_for(opt, params, x), closure_for(twin, twin_params, x)
        for _ in range(9):
            loss, twin_loss = opt.step(closure), twin.step(twin_closure)
            assert torch.equal(loss, twin_loss), setting.desc
            for p, q in zip(params, twin_params, strict=True):
                assert torch.equal(p, q), setting.desc
        assert_same(opt.state_dict(), twin.state_dict(), f"{setting.desc}: state_dict")
        # repeated parameters have one representation (torch #36831)
        twin.param_groups.extend(twin.param_groups)
        assert_same(opt.state_dict()["param_groups"][-1], twin.state_dict()["param_groups"][-1])


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_loads_an_older_state_dict(info: OptimizerInfo, dtype: torch.dtype,
                                   device: str) -> None:
    """Without the flags torch added later, and with a plain number for a tensor ``step``."""
    for setting in settings(info, device, dtype):
        opt, params, x = _primed(info, setting.kwargs, device, dtype, steps=3)
        older = copy.deepcopy(opt.state_dict())
        for groups in _groups(older):
            for group in groups:
                for flag in NEWER_FLAGS:
                    group.pop(flag, None)
        opt.load_state_dict(older)
        opt.step(closure_for(opt, params, x))

        plain = copy.deepcopy(opt.state_dict())

        def untensor_step(state: dict[str, Any]) -> None:
            if isinstance(state.get("step"), Tensor):
                state["step"] = state["step"].item()

        _map_states(plain, untensor_step)
        opt.load_state_dict(plain)
        opt.step(closure_for(opt, params, x))
        assert all(torch.isfinite(p).all() for p in params), setting.desc


def _copy_steps_like_the_original(copied: torch.optim.Optimizer, opt: torch.optim.Optimizer,
                                  params: list[Tensor], x: Tensor, desc: str) -> None:
    copy_params = [p for group in copied.param_groups for p in group["params"]]
    assert all(p is not q for p, q in zip(copy_params, params, strict=True))
    for p, q in zip(copy_params, params, strict=True):
        assert torch.equal(p, q), desc
    closure, copy_closure = closure_for(opt, params, x), closure_for(copied, copy_params, x)
    for _ in range(5):
        opt.step(closure)
        copied.step(copy_closure)
        for p, q in zip(copy_params, params, strict=True):
            assert torch.equal(p, q), desc


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_deepcopy_keeps_public_attributes_and_steps(info: OptimizerInfo, dtype: torch.dtype,
                                                    device: str) -> None:
    def public(obj: Any) -> set[str]:
        return {k for k in vars(obj) if not k.startswith("_")}

    for setting in settings(info, device, dtype):
        opt, params, x = _primed(info, setting.kwargs, device, dtype)
        copied = copy.deepcopy(opt)
        assert public(copied) == public(opt), setting.desc
        _copy_steps_like_the_original(copied, opt, params, x, setting.desc)


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_pickled_optimizer_steps(info: OptimizerInfo, dtype: torch.dtype, device: str) -> None:
    for setting in settings(info, device, dtype):
        opt, params, x = _primed(info, setting.kwargs, device, dtype)
        copied = pickle.loads(pickle.dumps(opt))
        _copy_steps_like_the_original(copied, opt, params, x, setting.desc)


def _recorder(name: str, calls: list[tuple[str, Any]]) -> Any:
    return lambda optimizer, args, kwargs: calls.append((name, optimizer))


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_step_hooks_fire_once_per_step(info: OptimizerInfo, dtype: torch.dtype,
                                       device: str) -> None:
    """Global hooks, then the optimizer's own, once each per ``step()``, handed the optimizer
    the caller stepped (a wrapper's inner step is no second step)."""
    for setting in settings(info, device, dtype):
        params, x = quadratic_params(device, dtype)
        opt = build(info, params, setting.kwargs)
        calls: list[tuple[str, Any]] = []
        handles = [
            register_optimizer_step_pre_hook(_recorder("global pre", calls)),
            register_optimizer_step_post_hook(_recorder("global post", calls)),
            opt.register_step_pre_hook(_recorder("pre", calls)),
            opt.register_step_post_hook(_recorder("post", calls)),
        ]
        try:
            closure = closure_for(opt, params, x)
            for _ in range(4):
                opt.step(closure)
            opt.step()  # no closure: the same hooks
        finally:
            for handle in handles:
                handle.remove()
        once = ["global pre", "pre", "post", "global post"]
        assert [name for name, _ in calls] == once * 5, setting.desc
        assert all(optimizer is opt for _, optimizer in calls), setting.desc


def _check_state_dict_hooks(opt: torch.optim.Optimizer, desc: str) -> None:
    calls: list[str] = []

    def post(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
        calls.append("post")
        return {**state_dict, "marked": True}

    def load_pre(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
        calls.append("load pre")
        assert state_dict.get("marked") is True
        return {k: v for k, v in state_dict.items() if k != "marked"}

    opt.register_state_dict_pre_hook(lambda optimizer: calls.append("pre"))
    opt.register_state_dict_post_hook(post)
    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_post_hook(lambda optimizer: calls.append("load post"))
    state_dict = opt.state_dict()
    assert state_dict["marked"] is True, desc
    opt.load_state_dict(state_dict)
    assert calls == ["pre", "post", "load pre", "load post"], desc


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_state_dict_hooks(info: OptimizerInfo, dtype: torch.dtype, device: str) -> None:
    for setting in settings(info, device, dtype):
        opt, params, x = _primed(info, setting.kwargs, device, dtype, steps=3)
        _check_state_dict_hooks(opt, setting.desc)
        opt.step(closure_for(opt, params, x))
