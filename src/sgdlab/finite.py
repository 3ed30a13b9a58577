"""NaN and infinity checks for a training loop and for the state it is about to checkpoint.

:class:`FiniteGuard` checks a loss and the gradients it left, after ``backward`` and before the
optimizer uses them; :func:`nonfinite_state` checks a model and its optimizer's state before a
checkpoint is written (an optimizer can make a NaN from finite gradients: a division by zero).
The single-process runner (``sgdlab.bench``) and the distributed ranks (``sgdlab.distributed``)
both use them, so this module sits beside ``errors`` and ``checkpoint``: every package may.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch


class NonFinite(Exception):
    """Raised from inside a step when the loss or a gradient is NaN or infinite.

    Not an :class:`~sgdlab.errors.SgdlabError`: the runner catches it and decides (stop or
    skip); ``what`` says what was non-finite, for the message.
    """

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class FiniteGuard:
    """Checks a loss and the gradients it left on ``model``'s parameters."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self._named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self._params = [p for _, p in self._named]
        self._one_transfer = device.type != "cpu"

    def check(self, loss: torch.Tensor) -> float:
        """The loss as a float; raise :class:`NonFinite` if it or a gradient is not finite."""
        grads = [p.grad for p in self._params if p.grad is not None]
        if self._one_transfer:
            # float64 throughout: stack needs one dtype (a bf16 model, a float32 loss), and the
            # loss must come back as it is, for the log.
            sums = torch.stack(
                [loss.detach().reshape(()).double(), *(g.sum().double() for g in grads)]
            )
            values = sums.tolist()  # the one transfer (and synchronisation) of the step
            value, total = values[0], sum(values)
        else:
            value = loss.item()
            total = value
            for g in grads:
                total += float(g.sum())
        if math.isfinite(total):
            return value
        if not math.isfinite(value):
            raise NonFinite(f"the loss is {value}")
        for name, p in self._named:
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                raise NonFinite(f"the gradient of parameter {name!r} has {nonfinite_kind(p.grad)}")
        return value  # every element finite: the sum of huge values overflowed, nothing more


def nonfinite_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    model_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> str | None:
    """Where the model or the optimizer's state holds a NaN or an infinity, or ``None``.

    Called before a checkpoint is written; names the first bad tensor found (a parameter or a
    buffer by its name, optimizer state by its key and, for torch's layout, its parameter).
    A caller that has the state dicts it is about to write passes them, so they are not built
    twice (a wrapper's ``state_dict`` clones its anchors, or waits for an average in flight).
    """
    if model_state is None:
        model_state = model.state_dict()
    for name, tensor in model_state.items():
        if _bad(tensor):
            kind = "parameter" if _is_param(model, name) else "buffer"
            return f"{kind} {name!r} has {nonfinite_kind(tensor)}"
    if optimizer is None:
        return None
    names = _optimizer_param_names(model, optimizer)
    if optimizer_state is None:
        optimizer_state = optimizer.state_dict()
    for path, tensor in _tensors(optimizer_state, ()):
        if _bad(tensor):
            return f"optimizer state {_describe(path, names)} has {nonfinite_kind(tensor)}"
    return None


def _bad(tensor: torch.Tensor) -> bool:
    return (tensor.is_floating_point() or tensor.is_complex()) and not bool(
        torch.isfinite(tensor).all()
    )


def nonfinite_kind(tensor: torch.Tensor) -> str:
    return "nan" if bool(torch.isnan(tensor).any()) else "inf"


def _is_param(model: torch.nn.Module, name: str) -> bool:
    return name in dict(model.named_parameters())


def _tensors(obj: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, (*path, key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from _tensors(value, (*path, i))


def _optimizer_param_names(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[int, str]:
    """torch numbers a state dict's parameters over its groups in order: index -> name."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {i: by_id.get(id(p), f"#{i}") for i, p in enumerate(params)}


def _describe(path: tuple[Any, ...], names: dict[int, str]) -> str:
    # torch's layout ["state"][index][key], also nested in a wrapper (["inner"]["state"]...).
    for i in range(len(path) - 2):
        if path[i] == "state" and isinstance(path[i + 1], int) and path[i + 1] in names:
            key = ".".join(str(k) for k in path[i + 2 :])
            return f"{key!r} of parameter {names[path[i + 1]]!r}"
    return repr(".".join(str(k) for k in path))
