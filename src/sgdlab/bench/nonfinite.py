"""Catch a NaN or an infinity in training before it reaches the model, or a checkpoint.

The runner checks every step, not only the steps it logs: a NaN that enters the parameters at
step 1,001 of a run logged every 1,000 steps has, by the next log, spread to every parameter
and to the optimizer's state, and any checkpoint written meanwhile is poisoned. What is
checked, and when:

* **each loss evaluation** (each call of the closure: once a step for first-order optimizers,
  several times for L-BFGS and mL-BFGS), the loss and the gradient of every parameter, after
  ``backward`` and so *before* the optimizer applies them;
* **each checkpoint**, before it is written: every tensor of the model and of the optimizer's
  state, since an optimizer can make a NaN from finite gradients (a division by zero)
  (:func:`sgdlab.finite.nonfinite_state`, which the distributed ranks use too);
* **the end of the run**, the model, before ``model.pt`` is written.

The per-step check costs one reduction per gradient and no extra synchronisation on a GPU:
:meth:`sgdlab.finite.FiniteGuard.check` sums the loss and every gradient's sum, a NaN or an infinity
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
import re
from typing import Any

import torch

POLICIES = ("stop", "skip")

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
