"""Build a proximal wrapper around a named or given inner optimizer (:func:`make_proximal`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from sgdlab.errors import ConfigError
from sgdlab.optim._proximal_kernels import quoted_names
from sgdlab.optim.proximal import SETTINGS, Proximal

__all__ = ["BUILTIN_INNER", "make_proximal"]

InnerFactory = Callable[..., Optimizer]


def make_proximal(
    inner: str | InnerFactory, params: Iterable[Any], *, lam: float, **options: Any
) -> Proximal:
    """Build ``Proximal(inner(params, **hparams), lam=lam, **settings)``.

    ``options`` holds the wrapper's settings (the keyword arguments of :class:`Proximal`) and the
    inner optimizer's hyperparameters (everything else). ``inner`` is a factory ``(params,
    **hparams) -> Optimizer`` (a registry entry, an optimizer class) or one of the names in
    :data:`BUILTIN_INNER`. ``"sgd"`` is ``torch.optim.SGD`` with ``momentum=0.9`` unless given:
    TRSGD was run with momentum, and so is the SGD practitioners compare against;
    ``momentum=0`` gives the textbook update.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> opt = make_proximal("sgd", [w], lam=0.01, window=5, lr=0.1)
    >>> type(opt.inner).__name__, opt.param_groups[0]["momentum"], opt.window
    ('SGD', 0.9, 5)
    """
    if isinstance(inner, str):
        key = inner.lower()
        if key not in BUILTIN_INNER:
            raise ConfigError(f"Unknown inner optimizer {inner!r} (built in: "
                              f"{quoted_names(tuple(BUILTIN_INNER))}; or pass a factory)")
        factory = BUILTIN_INNER[key]
    elif callable(inner):
        factory = inner
    else:
        raise ConfigError(f"Invalid inner: {inner!r} (a name or a factory)")
    settings = {key: options.pop(key) for key in SETTINGS if key in options}
    return Proximal(factory(params, **options), lam=lam, **settings)


def _sgd_with_momentum(params: Iterable[Any], **hparams: Any) -> Optimizer:
    hparams.setdefault("momentum", 0.9)
    return torch.optim.SGD(params, **hparams)


BUILTIN_INNER: dict[str, InnerFactory] = {
    "sgd": _sgd_with_momentum,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}
