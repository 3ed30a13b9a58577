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
    try:
        return spec.factory(params, **hparams)
    except TypeError as exc:  # a factory taking **kwargs passes unknown names on
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ConfigError(f"optimizer {spec.name!r}: {exc}") from None


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
