"""sgdlab's optimizers through PyTorch's own optimizer contract (part 1: the table, the steps).

PyTorch tests every optimizer of ``torch.optim`` with the device-generic tests of its
``test/test_optim.py`` (``TestOptimRenewed``), driven by one ``OptimizerInfo`` per optimizer in
``torch.testing._internal.common_optimizers``: the settings to try (``OptimizerInput``), the bad
inputs and the error each must raise (``ErrorOptimizerInput``), and what the optimizer supports
(sparse gradients, complex parameters, foreach). ``OPTIM_DB`` below is that table for ours,
built with torch's own types: mL-BFGS, the proximal wrapper coupled and decoupled around SGD
with momentum and around Adam, the registry's ``prox-sgd`` and ``prox-adam``, and the five
distributed algorithms, which run in one process with no process group (rank 0 of 1, every
collective the identity). Every check runs on float32 and float64, on the CPU and, where one
is present, on CUDA, for every setting of the entry.

The checks are our own code, written after torch's tests and ``pytorch_optimizer``'s generic
ones (its tests do not ship in its wheel; we read them). This file: the bad-input errors
(torch's errors for every optimizer and ours, ``test_errors``), an empty parameter list, the
loss goes the right way on torch's quadratic (contiguous and not, with each LR scheduler, with
``maximize``), per-group lr and weight decay, tensor lr (0-dim, ``[1]``, ``[1, 1]``), a step is a
no-op without gradients or with zero ones, ``zero_grad``, closures, printing, complex
parameters, sparse gradients, ``add_param_group`` and the foreach path against the loop.
``test_torch_contract_state.py``: state dicts, deepcopy, pickle and every kind of hook;
``test_torch_contract_peers.py``: ``pytorch_optimizer``'s generic checks.

What does not apply, and why: ``fused``, ``capturable`` and ``differentiable`` (none of ours has
them), CUDA graphs and ``torch.compile`` (not required of ours), multi-GPU and mixed
device/dtype parameter lists (one device per run here), peak-memory and >4 GiB tensor tests
(CUDA-only costs of torch's kernels), ``reset()`` (a ``pytorch_optimizer`` method, not part of
the torch contract: a fresh optimizer or ``load_state_dict`` does it), and mL-BFGS's
``maximize`` and complex parameters (it has no ``maximize``, and refuses complex parameters
when built).
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import (
    ExponentialLR,
    LambdaLR,
    LinearLR,
    ReduceLROnPlateau,
    StepLR,
)
from torch.testing._internal.common_optimizers import (
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
    _get_optim_inputs_including_global_cliquey_kwargs,
    get_error_inputs_for_all_optims,
)

from sgdlab.distributed import (
    EASGD,
    CoCoDSGD,
    LocalSGD,
    OverlapLocalSGD,
    SyncSGD,
    TorchPostLocalSGD,
)
from sgdlab.errors import ConfigError
from sgdlab.optim import MLBFGS, load_optimizer, make_proximal

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]

# -- the table -----------------------------------------------------------------------------------


def _inputs(*settings: tuple[str, dict[str, Any]]) -> Callable[..., list[OptimizerInput]]:
    def optim_inputs_func(device: Any = None, dtype: Any = None) -> list[OptimizerInput]:
        return [OptimizerInput(params=None, kwargs=copy.deepcopy(kw), desc=desc)
                for desc, kw in settings]

    return optim_inputs_func


def _errors(*ours: tuple[str, dict[str, Any], type[Exception], str],
            registry: bool = False) -> Callable[..., list[Any]]:
    """torch's errors for every optimizer (on the CPU, as torch runs them), then ours.

    A bad hyperparameter is given with real parameters: a wrapper builds its inner optimizer
    before it reads its own settings. The registry turns a TypeError into its ConfigError (a
    ValueError, the same line): one error type for every bad input it is handed.
    """

    def optim_error_inputs_func(device: Any, dtype: torch.dtype) -> list[ErrorOptimizerInput]:
        generic = get_error_inputs_for_all_optims(device, dtype)
        for error in generic:
            if error.error_regex == "Tensor lr must be 1-element":
                # torch's words or ours ("Invalid lr: ..."): the error type is what must agree
                error.error_regex = r"Tensor lr must be 1-element|Invalid lr"
            if registry and error.error_type is TypeError:
                error.error_type = ConfigError
        return generic + [
            ErrorOptimizerInput(
                OptimizerInput(params=_sample_params(device, dtype), kwargs=kw, desc=desc),
                error_type=error_type, error_regex=regex)
            for desc, kw, error_type, regex in ours
        ]

    return optim_error_inputs_func


def _sample_params(device: Any, dtype: torch.dtype) -> list[Tensor]:
    return [nn.Parameter(torch.randn(2, 3, device=device, dtype=dtype)),
            nn.Parameter(torch.randn(3, device=device, dtype=dtype))]


def _named(name: str, factory: Callable[..., torch.optim.Optimizer]) -> Callable[..., Any]:
    factory.__name__ = factory.__qualname__ = name  # OptimizerInfo.name is the class's name
    return factory


def _proximal(inner: str, coupled: bool) -> Callable[..., torch.optim.Optimizer]:
    def build(params: Any, *, lam: float = 0.01, window: int = 3, **kwargs: Any) -> Any:
        return make_proximal(inner, params, lam=lam, window=window, coupled=coupled, **kwargs)

    mode = "coupled" if coupled else "decoupled"
    return _named(f"Proximal_{inner.upper() if inner == 'sgd' else inner.title()}_{mode}", build)


def _registry(name: str) -> Callable[..., torch.optim.Optimizer]:
    return _named(name.replace("-", "_"), functools.partial(load_optimizer, name))


class HeldTensors(nn.Module):
    """A model made of exactly the tensors given: what a distributed algorithm averages."""

    def __init__(self, tensors: list[Tensor]) -> None:
        super().__init__()
        self.held = tensors

    def parameters(self, recurse: bool = True) -> Any:
        return iter(self.held)


_ALGORITHM_KEYS = ("tau", "alpha", "anchor_momentum")
# Settings of the whole optimizer rather than of a parameter group: the wrappers' own, and
# mL-BFGS's curvature model, which all its groups share.
CONSTRUCTOR_KEYS = frozenset({
    *_ALGORITHM_KEYS, "lam", "window", "inner_decay", "coupled", "lam_schedule", "foreach",
    "blocks", "history_size", "update_freq", "beta_param", "beta_grad", "pair_momentum",
    "damping", "max_norm",
})


def _distributed(algorithm: type, inner: type, **defaults: Any) -> Callable[..., Any]:
    def build(params: Any, *, model: nn.Module | None = None, **kwargs: Any) -> Any:
        algo = {**defaults, **{k: kwargs.pop(k) for k in _ALGORITHM_KEYS if k in kwargs}}
        opt = inner(params, **kwargs)
        if model is None:  # the model is the parameters trained
            model = HeldTensors([p for group in opt.param_groups for p in group["params"]])
        return algorithm(model, opt, **algo)

    build.takes_a_model = True  # type: ignore[attr-defined]
    return _named(f"{algorithm.__name__}_{inner.__name__}", build)


_SCHEDULERS = (
    [lambda opt: StepLR(opt, gamma=0.9, step_size=5)],
    [lambda opt: LambdaLR(opt, lambda epoch: 0.95**epoch)],
    [lambda opt: LinearLR(opt, start_factor=0.5, total_iters=4),
     lambda opt: ExponentialLR(opt, gamma=0.95)],
    [lambda opt: ReduceLROnPlateau(opt)],
)

_BAD_LR = ("negative lr", {"lr": -1.0}, ValueError, r"Invalid (learning rate|lr): -1")
_PROX_ERRORS = (
    ("negative lam", {"lam": -1.0}, ValueError, r"Invalid lam: -1"),
    ("window 0", {"window": 0}, ValueError, r"Invalid window: 0"),
    ("unknown inner_decay", {"inner_decay": "cosine"}, ValueError,
     r"Invalid inner_decay: 'cosine' \(allowed: 'harmonic', 'none'\)"),
    ("unknown lam_schedule", {"lam_schedule": "x"}, ValueError, r"Invalid lam_schedule: 'x'"),
    ("non-bool foreach", {"foreach": 1}, ValueError, r"Invalid foreach: 1"),
)
_SGD_SETTINGS = (
    ("default", {"lr": 0.01}),
    ("no decay in the window", {"lr": 0.01, "lam": 0.1, "window": 5, "inner_decay": "none"}),
    ("lam / lr", {"lr": 0.01, "lam": 0.002, "window": 4, "lam_schedule": "inverse_lr"}),
    ("nesterov, weight decay", {"lr": 0.01, "nesterov": True, "weight_decay": 0.1}),
    ("plain SGD", {"lr": 0.02, "momentum": 0.0, "lam": 0.5}),
    ("tensor lr", {"lr": torch.tensor(0.01)}),
    ("maximize", {"lr": 0.01, "maximize": True, "weight_decay": 0.1}),
)
_ADAM_SETTINGS = (
    ("default", {"lr": 0.01}),
    ("amsgrad, strong pull", {"lr": 0.01, "lam": 0.5, "amsgrad": True}),
    ("weight decay, window 1", {"lr": 0.01, "weight_decay": 0.1, "window": 1}),
    ("tensor lr", {"lr": torch.tensor(0.01), "lam": 0.05}),
    ("maximize", {"lr": 0.01, "maximize": True}),
)


def _proximal_info(inner: str, coupled: bool) -> OptimizerInfo:
    return OptimizerInfo(
        _proximal(inner, coupled),
        optim_inputs_func=_inputs(*(_SGD_SETTINGS if inner == "sgd" else _ADAM_SETTINGS)),
        optim_error_inputs_func=_errors(_BAD_LR, *_PROX_ERRORS),
        scheduler_inputs=_SCHEDULERS,
        supported_impls=("foreach",),  # the proximal term's own kernels
        # SGD takes sparse gradients and so does the decoupled pull; the coupled term is dense
        supports_sparse=inner == "sgd" and not coupled,
        # torch's SGD takes sparse gradients without weight decay or nesterov (as its own entry)
        metadata_for_sparse=({"lr": 0.01, "momentum": 0.9, "lam": 0.1, "window": 3}, []),
        supports_complex=True,
    )


OPTIM_DB: list[OptimizerInfo] = [
    OptimizerInfo(
        MLBFGS,
        optim_inputs_func=_inputs(
            ("default", {}),
            ("small lr", {"lr": 0.01}),
            ("no momentum, short history", {"lr": 0.05, "momentum": 0.0, "update_freq": 2,
                                            "history_size": 3}),
            ("weight decay", {"lr": 0.02, "weight_decay": 0.01, "update_freq": 3}),
            ("no clipping, pair momentum", {"lr": 0.01, "max_norm": None, "update_freq": 2,
                                            "pair_momentum": 0.5}),
            ("small blocks", {"lr": 0.02, "blocks": "size:7", "update_freq": 2}),
            ("tensor lr", {"lr": torch.tensor(0.02)}),
        ),
        optim_error_inputs_func=_errors(
            ("negative lr", {"lr": -1.0}, ValueError, r"Invalid lr: -1"),
            ("momentum 1", {"momentum": 1.0}, ValueError, r"Invalid momentum: 1"),
            ("empty history", {"history_size": 0}, ValueError, r"Invalid history_size: 0"),
            ("update_freq 0", {"update_freq": 0}, ValueError, r"Invalid update_freq: 0"),
            ("negative weight decay", {"weight_decay": -0.1}, ValueError,
             r"Invalid weight_decay: -0.1"),
            ("max_norm 0", {"max_norm": 0.0}, ValueError, r"Invalid max_norm: 0"),
            ("beta_grad 1", {"beta_grad": 1.0}, ValueError, r"Invalid beta_grad: 1"),
        ),
        scheduler_inputs=_SCHEDULERS,
        supported_impls=(),
        supports_complex=False,
    ),
    _proximal_info("sgd", coupled=True),
    _proximal_info("sgd", coupled=False),
    _proximal_info("adam", coupled=True),
    _proximal_info("adam", coupled=False),
    OptimizerInfo(
        _registry("prox-sgd"),
        optim_inputs_func=_inputs(
            ("registry defaults", {"lr": 0.01}),
            ("window 3", {"lr": 0.01, "lam": 0.05, "window": 3}),
            ("no decay in the window", {"lr": 0.01, "inner_decay": "none", "lam": 0.1}),
            ("maximize", {"lr": 0.01, "maximize": True}),
        ),
        optim_error_inputs_func=_errors(_BAD_LR, *_PROX_ERRORS, registry=True),
        scheduler_inputs=_SCHEDULERS,
        supported_impls=("foreach",),
        supports_complex=True,
    ),
    OptimizerInfo(
        _registry("prox-adam"),
        optim_inputs_func=_inputs(
            ("registry defaults", {"lr": 0.01}),
            ("window 2, strong pull", {"lr": 0.01, "lam": 0.5, "window": 2}),
            ("decoupled", {"lr": 0.01, "coupled": False, "weight_decay": 0.1}),
            ("maximize", {"lr": 0.01, "maximize": True}),
        ),
        optim_error_inputs_func=_errors(
            _BAD_LR, *_PROX_ERRORS,
            ("bad betas", {"betas": (1.5, 0.9)}, ValueError, r"Invalid beta parameter"),
            registry=True,
        ),
        scheduler_inputs=_SCHEDULERS,
        supported_impls=("foreach",),
        supports_complex=True,
    ),
    *[
        OptimizerInfo(
            _distributed(algorithm, inner, **defaults),
            optim_inputs_func=_inputs(*settings),
            optim_error_inputs_func=_errors(_BAD_LR, *bad),
            scheduler_inputs=_SCHEDULERS,
            supported_impls=(),
            # the inner optimizer's sparse gradients, except where the step all-reduces them
            supports_sparse=inner is torch.optim.SGD and algorithm is not SyncSGD,
            metadata_for_sparse=({**defaults, "lr": 0.01, "momentum": 0.9}, []),
            # torch's model averager refuses complex parameters
            supports_complex=algorithm is not TorchPostLocalSGD,
        )
        for algorithm, inner, defaults, settings, bad in [
            (SyncSGD, torch.optim.SGD, {}, (
                ("momentum", {"lr": 0.01, "momentum": 0.9}),
                ("weight decay", {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.1}),
                ("tensor lr", {"lr": torch.tensor(0.01)}),
                ("maximize", {"lr": 0.01, "maximize": True}),
            ), ()),
            (LocalSGD, torch.optim.Adam, {"tau": 2}, (
                ("tau 2", {"lr": 0.01}),
                ("tau 3, weight decay", {"lr": 0.01, "tau": 3, "weight_decay": 0.1}),
                ("maximize", {"lr": 0.01, "maximize": True}),
            ), (("tau 0", {"tau": 0}, ValueError, r"Invalid tau: 0"),)),
            (OverlapLocalSGD, torch.optim.SGD, {"tau": 2, "alpha": 0.6}, (
                ("momentum", {"lr": 0.01, "momentum": 0.9}),
                ("anchor momentum", {"lr": 0.01, "anchor_momentum": 0.5, "tau": 3}),
                ("tensor lr", {"lr": torch.tensor(0.01), "momentum": 0.9}),
                ("maximize", {"lr": 0.01, "maximize": True}),
            ), (("alpha 2", {"alpha": 2.0}, ValueError, r"Invalid alpha: 2"),
                ("anchor momentum 1", {"anchor_momentum": 1.0}, ValueError,
                 r"Invalid anchor_momentum: 1"))),
            (EASGD, torch.optim.SGD, {"tau": 1, "alpha": 0.5}, (
                ("momentum", {"lr": 0.01, "momentum": 0.9}),
                ("tau 2", {"lr": 0.01, "tau": 2, "alpha": 0.2}),
            ), (("alpha 0", {"alpha": 0.0}, ValueError, r"Invalid alpha: 0"),)),
            (CoCoDSGD, torch.optim.SGD, {"tau": 2}, (
                ("momentum", {"lr": 0.01, "momentum": 0.9}),
                ("maximize, tau 1", {"lr": 0.01, "maximize": True, "tau": 1}),
            ), (("tau True", {"tau": True}, ValueError, r"Invalid tau: True"),)),
            (TorchPostLocalSGD, torch.optim.SGD, {"tau": 2}, (
                ("momentum", {"lr": 0.01, "momentum": 0.9}),
                ("tau 3, weight decay", {"lr": 0.01, "tau": 3, "weight_decay": 0.1}),
                ("maximize", {"lr": 0.01, "maximize": True}),
            ), (("tau 0", {"tau": 0}, ValueError, r"Invalid tau: 0"),)),
        ]
    ],
]

# What the table's OptimizerInfo has no field for: mL-BFGS fixes its blocks when it is built;
# a distributed algorithm is built on a model (``model=``), whose parameters a group must be.
ADDS_PARAM_GROUPS = {info.name: info.optim_cls is not MLBFGS for info in OPTIM_DB}
DISTRIBUTED = {info.name for info in OPTIM_DB if getattr(info.optim_cls, "takes_a_model", False)}


def cases(infos: list[OptimizerInfo] | None = None) -> list[Any]:
    """``(info, dtype, device)`` for every entry, dtype and device, with readable ids."""
    return [
        pytest.param(info, dtype, device, id=f"{info.name}-{str(dtype)[6:]}-{device}")
        for info in (OPTIM_DB if infos is None else infos)
        for dtype in DTYPES
        for device in DEVICES
    ]


def settings(info: OptimizerInfo, device: str, dtype: torch.dtype) -> list[OptimizerInput]:
    """Every setting of the entry, with ``foreach=False`` and ``True`` where it has foreach."""
    return _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, info)


def quadratic_params(device: str, dtype: torch.dtype, contiguous: bool = True,
                     seed: int = 0) -> tuple[list[Tensor], Tensor]:
    """torch's problem: weight (10, 5), bias (10), input (5); loss |weight @ input + bias|^2."""
    gen = torch.Generator().manual_seed(seed)
    shape_w, shape_b = ((10, 5), (10,)) if contiguous else ((10, 5, 2), (10, 2))

    def draw(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype).to(device)

    weight, bias = draw(*shape_w), draw(*shape_b)
    if not contiguous:
        weight, bias = weight[..., 0], bias[..., 0]
    return [nn.Parameter(weight), nn.Parameter(bias)], draw(5)


def quadratic_loss(params: list[Tensor], x: Tensor) -> Tensor:
    weight, bias = params
    return (weight.mv(x) + bias).pow(2).sum()


def closure_for(opt: torch.optim.Optimizer, params: list[Tensor],
                x: Tensor) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        opt.zero_grad()
        loss = quadratic_loss(params, x)
        loss.backward()
        return loss

    return closure


def build(info: OptimizerInfo, params: Any, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. the proximal overshoot warning
        return info.optim_cls(params, **copy.deepcopy(kwargs))


def split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kwargs`` as (a parameter group's settings, the constructor's own)."""
    group = {k: v for k, v in kwargs.items() if k not in CONSTRUCTOR_KEYS}
    return group, {k: v for k, v in kwargs.items() if k in CONSTRUCTOR_KEYS}


def maximizes(kwargs: dict[str, Any]) -> bool:
    return bool(kwargs.get("maximize", False))


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_errors(info: OptimizerInfo, dtype: torch.dtype, device: str) -> None:
    for error in info.optim_error_inputs_func(device=device, dtype=dtype):
        given = error.optimizer_error_input
        expect: Any = (pytest.warns if issubclass(error.error_type, Warning) else pytest.raises)
        if error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
            with expect(error.error_type, match=error.error_regex):
                info.optim_cls(given.params, **given.kwargs)
        else:
            opt = info.optim_cls(given.params, **given.kwargs)
            with expect(error.error_type, match=error.error_regex):
                opt.step()


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_empty_parameter_list_is_refused(info: OptimizerInfo, dtype: torch.dtype,
                                         device: str) -> None:
    for setting in settings(info, device, dtype):
        with pytest.raises(ValueError, match="empty parameter list"):
            build(info, [], setting.kwargs)


# -- progress ------------------------------------------------------------------------------------


def _goes_right_direction(info: OptimizerInfo, dtype: torch.dtype, device: str,
                          contiguous: bool, schedulers: list[Any]) -> None:
    for setting in settings(info, device, dtype):
        params, x = quadratic_params(device, dtype, contiguous)
        opt = build(info, params, setting.kwargs)
        scheds = [make(opt) for make in schedulers]
        closure = closure_for(opt, params, x)
        initial = closure().item()
        for _ in range(20):
            loss = opt.step(closure)
            for sched in scheds:
                if isinstance(sched, ReduceLROnPlateau):
                    sched.step(loss.item())
                else:
                    sched.step()
        final = closure().item()
        if maximizes(setting.kwargs):
            assert final > initial, setting.desc
        else:
            assert final < initial, setting.desc


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_goes_right_direction(info: OptimizerInfo, dtype: torch.dtype, device: str,
                              contiguous: bool) -> None:
    _goes_right_direction(info, dtype, device, contiguous, [])


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_goes_right_direction_under_lr_schedulers(info: OptimizerInfo, dtype: torch.dtype,
                                                  device: str) -> None:
    for schedulers in info.scheduler_inputs:
        _goes_right_direction(info, dtype, device, True, schedulers)


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_scheduled_lr_is_the_lr_the_step_uses(info: OptimizerInfo, dtype: torch.dtype,
                                              device: str) -> None:
    """A scheduler's lr and the same lr set by hand give the same parameters, bit for bit."""
    setting = settings(info, device, dtype)[0]
    runs = []
    for by_scheduler in (True, False):
        params, x = quadratic_params(device, dtype)
        opt = build(info, params, setting.kwargs)
        sched = StepLR(opt, step_size=2, gamma=0.5) if by_scheduler else None
        closure = closure_for(opt, params, x)
        for t in range(6):
            opt.step(closure)
            if sched is not None:
                sched.step()
            elif t % 2 == 1:
                for group in opt.param_groups:
                    group["lr"] = group["lr"] * 0.5
        runs.append(params)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_param_groups_lr(info: OptimizerInfo, dtype: torch.dtype, device: str) -> None:
    """A group with lr ~ 0 stays put while the other group's loss moves the right way."""
    for setting in settings(info, device, dtype):
        params, x = quadratic_params(device, dtype)
        still = nn.Parameter(torch.randn(2, device=device, dtype=dtype))
        before = still.detach().clone()
        group, outer = split(setting.kwargs)
        group.setdefault("lr", 1e-3)
        opt = build(info, [dict(params=params, **group), dict(params=[still])],
                    {**outer, "lr": 1e-28})
        initial = quadratic_loss(params, x).item()
        for _ in range(20):
            opt.zero_grad()
            quadratic_loss(params, x).backward()
            still.grad = torch.rand_like(still)
            opt.step()
        final = quadratic_loss(params, x).item()
        assert (final > initial) if maximizes(setting.kwargs) else (final < initial), setting.desc
        torch.testing.assert_close(still.detach(), before, rtol=0, atol=1e-20)


@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_param_groups_weight_decay(info: OptimizerInfo, dtype: torch.dtype, device: str) -> None:
    for setting in settings(info, device, dtype):
        if "weight_decay" not in setting.kwargs:
            continue
        params, x = quadratic_params(device, dtype)
        group, outer = split(setting.kwargs)
        opt = build(info, [dict(params=params[:1], **group),
                           dict(params=params[1:], **{**group, "weight_decay": 0.0})], outer)
        closure = closure_for(opt, params, x)
        initial = closure().item()
        for _ in range(20):
            opt.step(closure)
        final = closure().item()
        assert (final > initial) if maximizes(setting.kwargs) else (final < initial), setting.desc


@pytest.mark.parametrize("num_dim", [0, 1, 2])
@pytest.mark.parametrize(("info", "dtype", "device"), cases())
def test_tensor_lr(info: OptimizerInfo, dtype: torch.dtype, device: str, num_dim: int) -> None:
    """A one-element tensor lr of any shape is refused when built, or steps as the float."""
    for setting in settings(info, device, dtype):
        lr = setting.kwargs.get("lr")
        if not isinstance(lr, float):
            continue
        tensor_lr = torch.tensor(lr).reshape([1] * num_dim)
        params_t, x = quadratic_params(device, dtype)
        try:
            opt_t = build(info, params_t, {**setting.kwargs, "lr": tensor_lr})
        except ValueError as exc:
            assert re.search(r"\blr\b", str(exc)), str(exc)
            continue
        params_f, _ = quadratic_params(device, dtype)
        opt_f = build(info, params_f, setting.kwargs)
        for _ in range(10):
            opt_t.step(closure_for(opt_t, params_t, x))
            opt_f.step(closure_for(opt_f, params_f, x))
        for a, b in zip(params_t, params_f, strict=True):
            torch.testing.assert_close(a, b, msg=setting.desc)
