"""The workload registry: ``get_workload(name, **options)`` and ``workload_names()``.

Each workload declares its data set, model, metric and the target value for time-to-target.
Options (``sgdlab train --set workload.<key>=<value>``) are the keyword arguments of its
builder; values given as strings are converted to the type of the builder's default.

| name | data | model | convex |
|---|---|---|---|
| logreg-fmnist | Fashion-MNIST, pixels minus the train mean | multinomial logistic, λ=1e-3 | yes |
| logreg-breast-cancer | scikit-learn's breast cancer, standardised | binary logistic λ=1e-2 | yes |
| sparse-logreg | seeded RCV1-like sparse set | binary logistic, λ=1e-4 | yes |
| mlp-mnist | MNIST | MLP 784-256-128-10 | no |
| cnn-fmnist | Fashion-MNIST | 2 conv + BatchNorm, 2 linear | no |
| resnet18-cifar10 | CIFAR-10 archive (path) | ResNet-18 (width option) | no |
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgdlab.errors import ConfigError
from sgdlab.workloads.base import SparseRows, Workload
from sgdlab.workloads.convex import cached_optimum, smoothness_bound
from sgdlab.workloads.datasets import ArrayDataset, load_dataset
from sgdlab.workloads.models import MLP, LinearClassifier, ResNet18, SmallCNN


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    description: str
    dataset: str
    metric: str
    target: float
    convex: bool
    builder: Callable[..., Workload]


_REGISTRY: dict[str, WorkloadSpec] = {}


def _register(
    name: str, description: str, dataset: str, target: float, convex: bool
) -> Callable[[Callable[..., Workload]], Callable[..., Workload]]:
    def wrap(fn: Callable[..., Workload]) -> Callable[..., Workload]:
        _REGISTRY[name] = WorkloadSpec(name, description, dataset, "accuracy", target, convex, fn)
        return fn

    return wrap


def workload_names() -> list[str]:
    return sorted(_REGISTRY)


def workload_spec(name: str) -> WorkloadSpec:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown workload {name!r}; choose one of {', '.join(workload_names())}")
    return _REGISTRY[name]


def workload_options(name: str) -> dict[str, Any]:
    """The options a workload takes, with their defaults."""
    sig = inspect.signature(workload_spec(name).builder)
    return {k: p.default for k, p in sig.parameters.items() if k != "cache_dir"}


def get_workload(name: str, cache_dir: Path | None = None, **options: Any) -> Workload:
    """Load the data and build the workload ``name`` with ``options``."""
    spec = workload_spec(name)
    defaults = workload_options(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        accepted = ", ".join(defaults) or "none"
        raise ConfigError(
            f"workload {name!r} has no option {', '.join(unknown)}; options: {accepted}"
        )
    typed = {k: _coerce(name, k, v, defaults[k]) for k, v in options.items()}
    workload = spec.builder(cache_dir=cache_dir, **typed)
    workload.cache_dir = cache_dir
    return workload


def _coerce(workload: str, key: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str) or default is None or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return type(default)(value)
    except ValueError:
        raise ConfigError(
            f"invalid value {value!r} for option {key} of workload {workload!r}: "
            f"expected {type(default).__name__}"
        ) from None


def _check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"invalid {key}: {value} (must be positive)")


def _tensors(ds: ArrayDataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.ascontiguousarray(ds.x_train, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(ds.y_train, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(ds.x_test, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(ds.y_test, dtype=np.int64)),
    )


def linear_workload(
    name: str,
    xtr: torch.Tensor | SparseRows,
    ytr: torch.Tensor,
    xte: torch.Tensor | SparseRows,
    yte: torch.Tensor,
    num_classes: int,
    l2: float,
    target: float = 0.0,
    options: dict[str, Any] | None = None,
    optimum_fn: Callable[[Workload], Any] = cached_optimum,
) -> Workload:
    """L2-regularised logistic regression on the given data (binary when ``num_classes == 2``),
    with its constants μ = λ and L (see ``convex.py``) and its optimum."""
    _check_positive("l2", l2)
    in_features = xtr.shape[1] if isinstance(xtr, SparseRows) else int(xtr[0].numel())
    return Workload(
        name=name,
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        num_classes=num_classes,
        make_module=lambda: LinearClassifier(in_features, num_classes),
        target=target,
        l2=l2,
        mu=l2,
        L=smoothness_bound(xtr, num_classes, l2),
        train_eval_size=None,
        options=options or {},
        optimum_fn=optimum_fn,
    )


@_register("logreg-fmnist", "L2 multinomial logistic regression", "fashion-mnist", 0.82, True)
def _logreg_fmnist(cache_dir: Path | None = None, l2: float = 1e-3) -> Workload:
    xtr, ytr, xte, yte = _tensors(load_dataset("fashion-mnist", cache_dir=cache_dir))
    # Centring the pixels removes the large common direction of the Hessian (better conditioned).
    mean = xtr.mean(0, keepdim=True)
    xtr, xte = (xtr - mean).flatten(1), (xte - mean).flatten(1)
    return linear_workload("logreg-fmnist", xtr, ytr, xte, yte, 10, l2, 0.82, {"l2": l2})


@_register(
    "logreg-breast-cancer", "L2 binary logistic regression (tiny)", "breast-cancer", 0.95, True
)
def _logreg_breast_cancer(cache_dir: Path | None = None, l2: float = 1e-2) -> Workload:
    xtr, ytr, xte, yte = _tensors(load_dataset("breast-cancer", cache_dir=cache_dir))
    return linear_workload("logreg-breast-cancer", xtr, ytr, xte, yte, 2, l2, 0.95, {"l2": l2})


@_register(
    "sparse-logreg",
    "L2 binary logistic regression, RCV1-like sparse",
    "sparse-rcv1like",
    0.85,
    True,
)
def _sparse_logreg(
    cache_dir: Path | None = None, l2: float = 1e-4, n_samples: int = 100_000, seed: int = 0
) -> Workload:
    if n_samples < 10:
        raise ConfigError(f"invalid n_samples: {n_samples} (at least 10)")
    ds = load_dataset("sparse-rcv1like", cache_dir=cache_dir, n_samples=n_samples, seed=seed)
    ytr = torch.from_numpy(np.asarray(ds.y_train, dtype=np.int64))
    yte = torch.from_numpy(np.asarray(ds.y_test, dtype=np.int64))
    return linear_workload(
        "sparse-logreg",
        SparseRows(ds.x_train),
        ytr,
        SparseRows(ds.x_test),
        yte,
        2,
        l2,
        0.85,
        {"l2": l2, "n_samples": n_samples, "seed": seed},
    )


@_register("mlp-mnist", "MLP 784-256-128-10", "mnist", 0.97, False)
def _mlp_mnist(cache_dir: Path | None = None, hidden: int = 256) -> Workload:
    if hidden < 1:
        raise ConfigError(f"invalid hidden: {hidden}")
    xtr, ytr, xte, yte = _tensors(load_dataset("mnist", cache_dir=cache_dir))
    return Workload(
        name="mlp-mnist",
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        num_classes=10,
        make_module=lambda: MLP(784, (hidden, hidden // 2), 10),
        target=0.97,
        options={"hidden": hidden},
    )


@_register("cnn-fmnist", "small CNN with BatchNorm", "fashion-mnist", 0.88, False)
def _cnn_fmnist(cache_dir: Path | None = None) -> Workload:
    xtr, ytr, xte, yte = _tensors(load_dataset("fashion-mnist", cache_dir=cache_dir))
    return Workload(
        name="cnn-fmnist",
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        num_classes=10,
        make_module=lambda: SmallCNN(10),
        target=0.88,
    )


@_register("resnet18-cifar10", "ResNet-18 (meant for a GPU)", "cifar10", 0.93, False)
def _resnet18_cifar10(
    cache_dir: Path | None = None, path: str = "", width: int = 64, limit: int = 0
) -> Workload:
    if width < 1:
        raise ConfigError(f"invalid width: {width}")
    ds = load_dataset("cifar10", cache_dir=cache_dir, **({"path": path} if path else {}))
    xtr, ytr, xte, yte = _tensors(ds)
    if limit > 0:  # a small slice, for CPU smoke runs
        xtr, ytr, xte, yte = xtr[:limit], ytr[:limit], xte[:limit], yte[:limit]
    return Workload(
        name="resnet18-cifar10",
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        num_classes=10,
        make_module=lambda: ResNet18(10, width),
        target=0.93,
        train_eval_size=2_000,
        options={"path": path, "width": width, "limit": limit},
    )
