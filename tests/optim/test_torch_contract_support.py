"""sgdlab's optimizers through PyTorch's optimizer contract (part 2: what a step supports).

The table and the reasoning are in ``test_torch_contract.py``. Here, after torch's
``test_step_is_noop_when_params_have_no_grad``, ``test_step_is_noop_for_zero_grads``,
``test_optimizer_can_be_printed``, ``test_complex``, ``test_rosenbrock_sparse`` (sparse
gradients step as dense ones, or are refused at every step), ``test_foreach_matches_forloop``,
and what torch's tests take for granted: ``zero_grad``, closures evaluated once and their loss
returned, and ``add_param_group``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.testing._internal.common_optimizers import OptimizerInfo

sys.path.insert(0, str(Path(__file__).parent))  # the shared table (pytest's importlib mode)
from test_torch_contract import (  # noqa: E402
    ADDS_PARAM_GROUPS,
    DISTRIBUTED,
    OPTIM_DB,
    HeldTensors,
    build,
    cases,
    closure_for,
    maximizes,
    quadratic_loss,
    quadratic_params,
    settings,
)


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_step_is_noop_when_params_have_no_grad(info: OptimizerInfo, dtype: torch.dtype,
                                               device: str) -> None:
    for setting in settings(info, device, dtype):
        params = [torch.randn(2, 3, device=device, dtype=dtype) for _ in range(2)]
        before = [p.clone() for p in params]
        opt = build(info, params, setting.kwargs)
        for _ in range(3):
            opt.step(lambda: torch.tensor([1.0], device=device, dtype=dtype))
        for p, q in zip(params, before, strict=True):
            assert torch.equal(p, q), setting.desc


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_step_is_noop_for_zero_grads(info: OptimizerInfo, dtype: torch.dtype,
                                     device: str) -> None:
    for setting in settings(info, device, dtype):
        if setting.kwargs.get("weight_decay", 0) != 0:
            continue  # weight decay moves parameters whatever the gradient
        param = nn.Parameter(torch.randn(5, 1, device=device, dtype=dtype))
        before = param.detach().clone()
        opt = build(info, [param], setting.kwargs)
        param.grad = torch.zeros_like(param)
        opt.step(lambda: torch.tensor([1.0], device=device, dtype=dtype))
        assert torch.equal(param.detach(), before), setting.desc


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_zero_grad(info: OptimizerInfo, dtype: torch.dtype, device: str) -> None:
    params, x = quadratic_params(device, dtype)
    opt = build(info, params, settings(info, device, dtype)[0].kwargs)
    quadratic_loss(params, x).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    quadratic_loss(params, x).backward()
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_closure_runs_once_and_its_loss_is_returned(info: OptimizerInfo, dtype: torch.dtype,
                                                    device: str) -> None:
    for setting in settings(info, device, dtype):
        params, x = quadratic_params(device, dtype)
        opt = build(info, params, setting.kwargs)
        inner = closure_for(opt, params, x)
        calls: list[Tensor] = []

        def closure(inner: Callable[[], Tensor] = inner, calls: list[Tensor] = calls) -> Tensor:
            calls.append(inner())
            return calls[-1]

        for t in range(4):
            returned = opt.step(closure)
            assert len(calls) == t + 1, setting.desc  # first-order: one evaluation a step
            assert returned is calls[-1], setting.desc
        assert opt.step() is None  # no closure: no loss


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_can_be_printed(info: OptimizerInfo, dtype: torch.dtype, device: str) -> None:
    for setting in settings(info, device, dtype):
        text = repr(build(info, quadratic_params(device, dtype)[0], setting.kwargs))
        assert "Parameter Group 0" in text


# -- what each optimizer supports ----------------------------------------------------------------


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_complex_params(info: OptimizerInfo, dtype: torch.dtype, device: str) -> None:
    """Complex parameters step as their real views do (torch's test_complex), or are refused."""
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    for setting in settings(info, device, dtype):
        gen = torch.Generator().manual_seed(0)
        complex_params = [
            torch.randn(10, 5, dtype=cdtype, generator=gen).to(device).requires_grad_(),
            torch.randn(10, dtype=cdtype, generator=gen).to(device).requires_grad_(),
            torch.randn(10, 5, dtype=dtype, generator=gen).to(device).requires_grad_(),
        ]
        if not info.supports_complex:
            with pytest.raises(ValueError, match=r"(?i)complex|real"):
                build(info, complex_params, setting.kwargs)
            continue
        real_params = [(torch.view_as_real(p) if p.is_complex() else p).detach().clone()
                       .requires_grad_() for p in complex_params]
        complex_opt = build(info, complex_params, setting.kwargs)
        real_opt = build(info, real_params, setting.kwargs)
        for _ in range(4):
            for p, q in zip(complex_params, real_params, strict=True):
                q.grad = torch.randn(q.shape, generator=gen, dtype=dtype).to(device)
                p.grad = torch.view_as_complex(q.grad) if p.is_complex() else q.grad.clone()
            complex_opt.step()
            real_opt.step()
            for p, q in zip(complex_params, real_params, strict=True):
                seen = torch.view_as_real(p) if p.is_complex() else p
                torch.testing.assert_close(seen, q, msg=setting.desc)


def _sparse_closure(opt: torch.optim.Optimizer, params: list[Tensor], x: Tensor,
                    sparse: bool) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        opt.zero_grad()
        loss = quadratic_loss(params, x)
        loss.backward()
        if sparse:
            for p in params:
                assert p.grad is not None
                p.grad = p.grad.to_sparse()
        return loss

    return closure


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_sparse_gradients(info: OptimizerInfo, dtype: torch.dtype, device: str) -> None:
    """Supported: a sparse gradient steps as its dense copy. Otherwise refused with a clear
    error at *every* step, the parameters left as they were."""
    if info.supports_sparse:
        kwargs = info.metadata_for_sparse[0]
        runs = []
        for sparse in (True, False):
            params, x = quadratic_params(device, dtype)
            opt = build(info, params, kwargs)
            for _ in range(7):
                opt.step(_sparse_closure(opt, params, x, sparse))
            runs.append(params)
        for a, b in zip(*runs, strict=True):
            torch.testing.assert_close(a, b)
        return
    for setting in settings(info, device, dtype):
        params, x = quadratic_params(device, dtype)
        opt = build(info, params, setting.kwargs)
        for _ in range(5):  # every position of a window, before and after a round
            before = [p.detach().clone() for p in params]
            with pytest.raises((RuntimeError, ValueError), match=r"(?i)sparse"):
                opt.step(_sparse_closure(opt, params, x, True))
            for p, q in zip(params, before, strict=True):
                assert torch.equal(p, q), setting.desc
            opt.step(_sparse_closure(opt, params, x, False))


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_add_param_group(info: OptimizerInfo, dtype: torch.dtype, device: str) -> None:
    for setting in settings(info, device, dtype):
        params, x = quadratic_params(device, dtype)
        if info.name in DISTRIBUTED:
            opt = info.optim_cls(params[:1], model=HeldTensors(params), **setting.kwargs)
            with pytest.raises(ValueError, match="not in the model"):
                opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})
        else:
            opt = build(info, params[:1], setting.kwargs)
        if not ADDS_PARAM_GROUPS[info.name]:
            with pytest.raises(ValueError, match="add_param_group"):
                opt.add_param_group({"params": params[1:]})
            continue
        closure = closure_for(opt, params, x)
        opt.step(closure)
        opt.add_param_group({"params": params[1:], "lr": 0.02})
        assert opt.param_groups[-1]["lr"] == 0.02
        bias = params[1].detach().clone()
        initial = closure().item()
        for _ in range(10):
            opt.step(closure)
        assert not torch.equal(params[1].detach(), bias), setting.desc
        final = closure().item()
        assert (final > initial) if maximizes(setting.kwargs) else (final < initial), setting.desc


@pytest.mark.parametrize(("info", "dtype", "device"),
                         cases([i for i in OPTIM_DB if "foreach" in i.supported_impls]))
def test_foreach_matches_forloop(info: OptimizerInfo, dtype: torch.dtype, device: str) -> None:
    for setting in info.optim_inputs_func(device=device):
        runs = []
        for foreach in (False, True):
            params, x = quadratic_params(device, dtype)
            opt = build(info, params, {**setting.kwargs, "foreach": foreach})
            closure = closure_for(opt, params, x)
            for t in range(7):
                if t == 3:
                    opt.zero_grad()
                    opt.step()  # no gradients: a step that must skip every parameter
                else:
                    opt.step(closure)
            runs.append(params)
        for a, b in zip(*runs, strict=True):
            torch.testing.assert_close(a, b, msg=setting.desc)
