"""Optimizers by name: torch's, ours, and (optionally) the peers of ``pytorch_optimizer``.

``load_optimizer("adam", model.parameters(), lr=1e-3)`` builds any registered optimizer;
``optimizer_names()`` lists them. Names are lower case. Three families:

* torch's own: ``sgd``, ``adam``, ``adamw``, ``lbfgs``;
* sgdlab's, registered by their modules as they are imported here;
* ``peer:<name>``: any optimizer of the ``pytorch_optimizer`` package, when the optional
  ``peers`` extra is installed (``pip install 'sgdlab[peers]'``).

Unknown names and unknown hyperparameters raise :class:`~sgdlab.errors.ConfigError` with one
line that says what is accepted; bad values raise the optimizer's own ``ValueError``.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> type(load_optimizer("sgd", [w], lr=0.1, momentum=0.9)).__name__
    'SGD'
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from sgdlab.errors import ConfigError

OptimizerFactory = Callable[..., torch.optim.Optimizer]

PEER_PREFIX = "peer:"


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer: its factory and a line describing it."""

    name: str
    factory: OptimizerFactory
    description: str
    family: str  # "torch", "sgdlab" or "peer"


_REGISTRY: dict[str, OptimizerSpec] = {}

# torch.optim's first-order optimizers: their step(closure) calls the closure once, under
# enable_grad, before the update. Exact types only: a subclass may override step.
SINGLE_PASS_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.NAdam,
    torch.optim.RAdam,
)


def register_optimizer(
    name: str, factory: OptimizerFactory, description: str, family: str = "sgdlab"
) -> None:
    """Add ``factory(params, **hparams) -> Optimizer`` under ``name`` (lower case, unique)."""
    if name != name.lower() or not name or name.startswith(PEER_PREFIX):
        raise ValueError(f"Invalid optimizer name: {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"Optimizer {name!r} is already registered")
    _REGISTRY[name] = OptimizerSpec(name, factory, description, family)


def peers_available() -> bool:
    """Whether the optional ``pytorch_optimizer`` package is installed."""
    return importlib.util.find_spec("pytorch_optimizer") is not None


def peer_names() -> list[str]:
    """The ``peer:<name>`` optimizers on offer (empty without the ``peers`` extra)."""
    if not peers_available():
        return []
    from pytorch_optimizer import get_supported_optimizers

    return sorted(PEER_PREFIX + str(n).lower() for n in get_supported_optimizers())


def optimizer_names(include_peers: bool = False) -> list[str]:
    """Registered names, ours and torch's first; peers too when asked."""
    names = sorted(_REGISTRY)
    return names + peer_names() if include_peers else names


def get_spec(name: str) -> OptimizerSpec:
    """The spec registered under ``name`` (dynamic names such as ``peer:x`` included)."""
    key = name.strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    for prefix, resolver in _DYNAMIC.items():
        if key.startswith(prefix):
            return resolver(key[len(prefix) :])
    raise ConfigError(
        f"unknown optimizer {name!r}; choose one of {', '.join(optimizer_names())}"
        + (", or peer:<name> (see 'sgdlab list')" if peers_available() else "")
    )


def load_optimizer(name: str, params: Iterable[Any], **hparams: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` over ``params`` with ``hparams``."""
    spec = get_spec(name)
    _check_hparams(spec, hparams)
    checked = spec.family != "peer"
    try:
        # Warnings wait for the value checks below: a refused value gets one line, not two.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = spec.factory(params, **hparams)
    except ValueError:
        raise  # the optimizer's own "Invalid ..." line
    except (TypeError, IndexError, KeyError) as exc:  # lr="abc", betas=0.9, an unknown name
        if checked:
            _check_values(hparams)
        raise ConfigError(f"optimizer {spec.name!r}: {str(exc).splitlines()[0]}") from None
    if checked:
        _check_values(hparams)  # what the optimizer accepted silently: lr=nan, momentum=1.5
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return opt


def accepted_hparams(spec: OptimizerSpec) -> list[str] | None:
    """The keyword names a factory takes, or None when it takes any (``**kwargs``)."""
    sig = inspect.signature(spec.factory)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return [n for n, p in list(sig.parameters.items())[1:] if p.kind is not p.VAR_POSITIONAL]


def _check_hparams(spec: OptimizerSpec, hparams: dict[str, Any]) -> None:
    accepted = accepted_hparams(spec)
    if accepted is None:
        return
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise ConfigError(
            f"optimizer {spec.name!r} takes no hyperparameter {', '.join(unknown)}; "
            f"it accepts {', '.join(accepted)}"
        )


def _real(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:  # torch takes a tensor lr
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _within(lo: float, hi: float, hi_open: bool = True) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        v = _real(value)
        return v is not None and lo <= v and (v < hi if hi_open else v <= hi)

    return check


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


_NONNEG = _within(0.0, math.inf)
_UNIT = _within(0.0, 1.0)
# The domains of the knobs torch's optimizers and ours share, checked where the optimizer itself
# did not refuse a value with its own ValueError: torch accepts SGD(lr=nan), SGD(momentum=1.5)
# and Adam(amsgrad="no") silently, raises TypeError or IndexError for lr="abc" or betas=0.9, and
# LBFGS refuses a bad line_search_fn only inside step(). A value from `--set` deserves
# "Invalid <knob>: <value>" up front.
_DOMAINS: dict[str, Callable[[Any], bool]] = {
    "lr": _NONNEG,
    "momentum": _UNIT,
    "dampening": _within(0.0, 1.0, hi_open=False),
    "weight_decay": _NONNEG,
    "eps": _NONNEG,
    "betas": lambda v: isinstance(v, tuple | list) and len(v) == 2 and all(map(_UNIT, v)),
    "beta_param": _UNIT,
    "beta_grad": _UNIT,
    "pair_momentum": _UNIT,
    "max_norm": lambda v: v is None or _within(0.0, math.inf, hi_open=False)(v) and v > 0,
    "history_size": _count,
    "update_freq": _count,
    "max_iter": _count,
    "max_eval": lambda v: v is None or _count(v),
    "tolerance_grad": _NONNEG,
    "tolerance_change": _NONNEG,
    "line_search_fn": lambda v: v is None or v == "strong_wolfe",
    **{k: lambda v: isinstance(v, bool) for k in (
        "amsgrad", "maximize", "nesterov", "capturable", "differentiable",
        "decoupled_weight_decay", "coupled")},
    **{k: lambda v: v is None or isinstance(v, bool) for k in ("foreach", "fused")},
}


def _check_values(hparams: dict[str, Any]) -> None:
    for key, value in hparams.items():
        check = _DOMAINS.get(key)
        if check is not None and not check(value):
            raise ConfigError(f"Invalid {key}: {value!r}")


def _peer_spec(name: str) -> OptimizerSpec:
    if not peers_available():
        raise ConfigError(
            f"optimizer 'peer:{name}' needs the optional package pytorch_optimizer: "
            "pip install 'sgdlab[peers]'"
        )
    from pytorch_optimizer import load_optimizer as load_peer

    try:
        cls = load_peer(name)
    except NotImplementedError as exc:
        raise ConfigError(f"unknown optimizer 'peer:{name}' in pytorch_optimizer") from exc

    def factory(params: Iterable[Any], **hparams: Any) -> torch.optim.Optimizer:
        try:
            return cls(params, **hparams)
        except TypeError:
            raise
        except Exception as exc:
            # pytorch_optimizer raises its own exception types for bad values; ours say ValueError.
            if isinstance(exc, ValueError) or not type(exc).__module__.startswith(
                "pytorch_optimizer"
            ):
                raise
            raise ValueError(f"Invalid hyperparameter for peer:{name}: {exc}") from exc

    factory.__signature__ = inspect.signature(cls)  # type: ignore[attr-defined]
    return OptimizerSpec(PEER_PREFIX + name, factory, f"pytorch_optimizer's {cls.__name__}", "peer")


_DYNAMIC: dict[str, Callable[[str], OptimizerSpec]] = {PEER_PREFIX: _peer_spec}


def register_prefix(prefix: str, resolver: Callable[[str], OptimizerSpec]) -> None:
    """Resolve every name ``<prefix><rest>`` with ``resolver(rest)`` (e.g. ``prox:adam``)."""
    if not prefix.endswith(":") or prefix in _DYNAMIC:
        raise ValueError(f"Invalid optimizer prefix: {prefix!r}")
    _DYNAMIC[prefix] = resolver


register_optimizer("sgd", torch.optim.SGD, "SGD, with optional momentum and weight decay", "torch")
register_optimizer("adam", torch.optim.Adam, "Adam (Kingma & Ba)", "torch")
register_optimizer("adamw", torch.optim.AdamW, "Adam with decoupled weight decay", "torch")
register_optimizer("lbfgs", torch.optim.LBFGS, "L-BFGS; needs a closure", "torch")
