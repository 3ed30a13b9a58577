"""sgdlab's optimizers through ``pytorch_optimizer``'s generic checks (part 4 of the contract).

``pytorch_optimizer`` (the peers of ``sgdlab list --peers``) runs every one of its optimizers
through a few generic tests; its tests are not in its wheel, so these are ours, after them:
training a small model in float32 cuts the loss by half again (``test_f32_optimizers``) and in
bfloat16 under autocast (``test_bf16_optimizers``); a closure with no gradient anywhere
(``test_closure``); parameters that take no gradient beside ones that do, with gradients built
by ``autograd.grad(create_graph=True)`` (``test_no_gradients``); a sparse gradient refused with
an error that says so (``test_sparse_not_supported``); negative ``lr``, ``eps``,
``weight_decay``, ``momentum`` and ``betas`` refused with ``ValueError`` (the
``test_general_optimizer_parameters`` family); a zero-rank and an empty parameter step (their
``simple_zero_rank_parameter`` and ``ZeroParameterSizeError`` cases). Complex parameters are in
``test_torch_contract_support.py``. ``reset()`` does not apply: it is ``pytorch_optimizer``'s
method, not torch's contract. The table is in ``test_torch_contract.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.testing._internal.common_optimizers import OptimizerInfo

sys.path.insert(0, str(Path(__file__).parent))  # the shared table (pytest's importlib mode)
from test_torch_contract import (  # noqa: E402
    DISTRIBUTED,
    OPTIM_DB,
    build,
    cases,
    settings,
)


def _cpu(infos: list[OptimizerInfo] | None = None) -> list[Any]:
    return [case for case in cases(infos) if case.values[2] == "cpu"]


def _training_kwargs(info: OptimizerInfo) -> dict[str, Any]:
    """The entry's first setting at a learning rate that trains the model in 30 steps."""
    kwargs = dict(settings(info, "cpu", torch.float32)[0].kwargs)
    kwargs.pop("foreach", None)
    return {**kwargs, "lr": 0.05 if _is_adam(info) else 0.2}


def _is_adam(info: OptimizerInfo) -> bool:
    return "adam" in info.name.lower()


def _train(info: OptimizerInfo, dtype: torch.dtype, autocast: bool) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 1.5]) > 0).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)
    kwargs = _training_kwargs(info)
    if info.name in DISTRIBUTED:
        opt = info.optim_cls(list(model.parameters()), model=model, **kwargs)
    else:
        opt = build(info, model.parameters(), kwargs)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.binary_cross_entropy_with_logits(model(x.to(dtype)).squeeze(1).float(), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.isfinite().all() for p in model.parameters())
    return losses[0], losses[-1]


@pytest.mark.parametrize(("info", "dtype", "device"), _cpu())
def test_trains_a_small_model(info: OptimizerInfo, dtype: torch.dtype, device: str) -> None:
    first, last = _train(info, dtype, autocast=False)
    assert first > 1.5 * last


@pytest.mark.parametrize("info", OPTIM_DB, ids=[i.name for i in OPTIM_DB])
def test_trains_in_bfloat16_under_autocast(info: OptimizerInfo) -> None:
    first, last = _train(info, torch.bfloat16, autocast=True)
    assert first > 1.2 * last  # bfloat16 parameters round away small steps


@pytest.mark.parametrize(("info", "dtype", "device"), _cpu())
def test_closure_without_any_gradient(info: OptimizerInfo, dtype: torch.dtype,
                                      device: str) -> None:
    for setting in settings(info, device, dtype):
        param = nn.Parameter(torch.randn(1, 1, dtype=dtype))
        before = param.detach().clone()
        opt = build(info, [param], setting.kwargs)
        opt.zero_grad()
        assert opt.step(closure=lambda: 1.0) == 1.0
        if setting.kwargs.get("weight_decay", 0) == 0:
            assert torch.equal(param.detach(), before), setting.desc


@pytest.mark.parametrize(("info", "dtype", "device"), _cpu())
def test_params_without_gradients_beside_ones_with(info: OptimizerInfo, dtype: torch.dtype,
                                                   device: str) -> None:
    for setting in settings(info, device, dtype):
        p1, p2, p3, p4 = (nn.Parameter(torch.randn(1, 1, dtype=dtype), requires_grad=r)
                          for r in (True, False, True, False))
        frozen = [p2.detach().clone(), p4.detach().clone()]
        opt = build(info, [{"params": [p1, p2]}, {"params": [p3]}, {"params": [p4]}],
                    setting.kwargs)
        opt.zero_grad()
        loss = ((p1 + p3) ** 2).sum()
        p1.grad, p3.grad = torch.autograd.grad(loss, [p1, p3], create_graph=True)
        opt.step(lambda: 0.1)
        opt.zero_grad(set_to_none=True)
        assert torch.equal(p2, frozen[0]) and torch.equal(p4, frozen[1]), setting.desc
        assert p1.isfinite().all() and p3.isfinite().all()


@pytest.mark.parametrize(("info", "dtype", "device"),
                         _cpu([i for i in OPTIM_DB if not i.supports_sparse]))
def test_sparse_gradient_is_refused_clearly(info: OptimizerInfo, dtype: torch.dtype,
                                            device: str) -> None:
    for setting in settings(info, device, dtype):
        weight = nn.Parameter(torch.randn(5, 1, dtype=dtype))
        grad = torch.rand_like(weight)
        grad[1] = 0.0
        opt = build(info, [weight], setting.kwargs)
        weight.grad = grad.to_sparse()
        with pytest.raises(RuntimeError, match=r"(?i)sparse"):
            opt.step(lambda: 0.1)


def _knobs(info: OptimizerInfo) -> dict[str, Any]:
    knobs: dict[str, Any] = {"lr": -1e-2, "weight_decay": -1e-3}
    if _is_adam(info):
        return {**knobs, "eps": -1e-6, "betas": (-0.1, 0.1)}
    return {**knobs, "momentum": -1e-3}


@pytest.mark.parametrize("info", OPTIM_DB, ids=[i.name for i in OPTIM_DB])
def test_negative_hyperparameters_are_refused(info: OptimizerInfo) -> None:
    base = settings(info, "cpu", torch.float32)[0].kwargs
    for knob, value in _knobs(info).items():
        params = [nn.Parameter(torch.randn(2, 2))]
        with pytest.raises(ValueError, match=r"^Invalid") as caught:
            build(info, params, {**base, knob: value})
        assert "takes no hyperparameter" not in str(caught.value)


@pytest.mark.parametrize(("info", "dtype", "device"), _cpu())
def test_zero_rank_and_empty_parameters_step(info: OptimizerInfo, dtype: torch.dtype,
                                             device: str) -> None:
    for setting in settings(info, device, dtype):
        scalar = nn.Parameter(torch.tensor(1.5, dtype=dtype))
        empty = nn.Parameter(torch.empty(0, dtype=dtype))
        opt = build(info, [scalar, empty], setting.kwargs)
        for _ in range(4):
            opt.zero_grad()
            (scalar**2 + empty.sum()).backward()
            opt.step()
        assert scalar.isfinite() and empty.shape == (0,), setting.desc
        assert (scalar.abs() > 1.5) if setting.kwargs.get("maximize") else (scalar.abs() < 1.5)


def test_the_table_covers_every_distributed_algorithm() -> None:
    from sgdlab.distributed import ALGORITHMS

    covered = {info.name.split("_")[0] for info in OPTIM_DB if info.name in DISTRIBUTED}
    assert covered == {cls.__name__ for cls in ALGORITHMS.values()}
