"""Catch a NaN or an infinity in training before it reaches the model, or a checkpoint.

Both trainers use it: the single-process run (:mod:`sgdlab.run.train`) and every rank
(:mod:`sgdlab.run.rank`). :class:`FiniteGuard` checks a loss and the gradients it left, after
``backward`` and before the optimizer uses them; :func:`nonfinite_state` checks a model and
its optimizer's state before a checkpoint is written.

The runner checks every step, not only the steps it logs: a NaN that enters the parameters at
step 1,001 of a run logged every 1,000 steps has, by the next log, spread to every parameter
and to the optimizer's state, and any checkpoint written meanwhile is poisoned. What is
checked, and when:

* **each loss evaluation** (each call of the closure: once a step for first-order optimizers,
  several times for L-BFGS and mL-BFGS), the loss and the gradient of every parameter, after
  ``backward`` and so *before* the optimizer applies them;
* **each checkpoint**, before it is written: every tensor of the model and of the optimizer's
  state, since an optimizer can make a NaN from finite gradients (a division by zero)
  (:func:`nonfinite_state`, which the distributed ranks use too);
* **the end of the run**, the model, before ``model.pt`` is written.

The per-step check costs one reduction per gradient and no extra synchronisation on a GPU:
:meth:`FiniteGuard.check` sums the loss and every gradient's sum, a NaN or an infinity
anywhere making the total non-finite, and reads the total together with the loss in one
transfer (on the CPU, where reading a value costs nothing, it adds Python floats instead,
which measured cheaper). A finite total proves every element finite; a non-finite one is
confirmed element by element (a sum of huge finite values can overflow), which also finds the
parameter to name. See ``benchmarks/results/harness.md`` for what it costs.

What a non-finite step does is the run's ``on_nonfinite`` policy: ``stop`` (the default) ends
the run with a :class:`~sgdlab.errors.DivergenceError`; ``skip`` leaves the model and the
optimizer as they were before the step and goes on with the next batch, until
:data:`MAX_CONSECUTIVE_SKIPS` steps in a row have been skipped: a run that cannot take a step
in that many batches is diverging, not meeting an odd batch.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from typing import Any

import torch

# Ten batches in a row without one finite step: past a rare bad batch (a corrupt sample, a
# spike), the iterate or the optimizer state itself is broken and skipping cannot repair it.
MAX_CONSECUTIVE_SKIPS = 10


def unloadable_state(state: dict[str, Any]) -> str | None:
    """What in ``state`` ``torch.load(weights_only=True)`` would refuse, or ``None``.

    Checkpoints are read with ``weights_only=True``, which refuses any object but tensors and
    plain containers. An optimizer that keeps another object in its state (a ``deque``, a
    class of its own) would write checkpoints that fail only when a crashed run is resumed;
    the runner tries the round trip before its first checkpoint and stops at once instead.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, with a paragraph of advice
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        return f"a {found.group(1)}" if found else f"an object it refuses ({type(exc).__name__})"
    return None


class Snapshot:
    """The model's and the optimizer's state before a step, to put back if it is skipped.

    Needed only for optimizers that may change their state before the check can fail (those
    that evaluate the closure again after moving the iterate, and any we cannot vouch for);
    for torch's single-pass optimizers the runner checks the gradients before ``step()``.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._optimizer = _clone(optimizer.state_dict())

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        model.load_state_dict(self._model)
        optimizer.load_state_dict(_clone(self._optimizer))


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {key: _clone(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_clone(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(_clone(value) for value in obj)
    return obj


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
                raise NonFinite(f"the gradient of parameter {name!r} has {_nonfinite_kind(p.grad)}")
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
            return f"{kind} {name!r} has {_nonfinite_kind(tensor)}"
    if optimizer is None:
        return None
    names = _optimizer_param_names(model, optimizer)
    if optimizer_state is None:
        optimizer_state = optimizer.state_dict()
    for path, tensor in _tensors(optimizer_state, ()):
        if _bad(tensor):
            return f"optimizer state {_describe(path, names)} has {_nonfinite_kind(tensor)}"
    return None


def _bad(tensor: torch.Tensor) -> bool:
    return (tensor.is_floating_point() or tensor.is_complex()) and not bool(
        torch.isfinite(tensor).all()
    )


def _nonfinite_kind(tensor: torch.Tensor) -> str:
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
