"""The contract of an optimizer that wraps another: shared groups, the inner's state dict inside
its own, settings a checkpoint must match, and a closure taken once for a single-pass inner.

:class:`InnerWrapper` is the common part of :class:`~sgdlab.optim.Proximal` and
:class:`~sgdlab.optim.clip.ClipGradNorm`: each adds its own step and state; the step hooks are
:mod:`sgdlab.optim._inner_step`'s.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from sgdlab.optim._inner_step import hooked_load_state_dict, hooked_state_dict
from sgdlab.optim.registry import SINGLE_PASS_OPTIMIZERS

__all__ = ["InnerWrapper", "is_index"]


def is_index(key: Any) -> bool:
    """Whether a state key is a parameter's index (torch packs state by index)."""
    return isinstance(key, int) and not isinstance(key, bool)


class InnerWrapper(Optimizer):
    """An optimizer around ``inner`` whose ``param_groups`` *are* the inner's (the same list),
    so an LR scheduler built on the wrapper reaches the inner step.

    ``state_dict()`` is ``{"state", "param_groups", "inner", "config"}``: the wrapper's state
    (by parameter index, as torch packs it; any other key as it is), the shared groups, the
    inner's own state dict and :meth:`_config`, which a loaded checkpoint must match. Tensors
    are references, as in ``torch.optim``. A subclass names its pickled settings in
    ``_settings`` and says how a saved per-parameter value is put back (:meth:`_restore`).
    """

    inner: Optimizer
    _settings: tuple[str, ...] = ()

    def __init__(self, inner: Optimizer, defaults: dict[str, Any]) -> None:
        self.inner = inner
        # Optimizer.__init__ sets up hooks and our own ``state``; handed the inner's groups, it
        # calls add_param_group on each, which adopts them (see add_param_group) instead of
        # copying. The list itself is then shared, so groups added later show up on both.
        super().__init__(inner.param_groups, defaults)
        self.param_groups = inner.param_groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer (and so to this one)."""
        if not any(param_group is group for group in self.inner.param_groups):
            self.inner.add_param_group(param_group)  # else adopted in __init__: nothing to add

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients through the inner optimizer."""
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """``{"state", "param_groups", "inner", "config"}`` (see the class)."""
        return hooked_state_dict(self, self._pack)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; the settings in its ``config`` must match this wrapper's."""
        hooked_load_state_dict(self, state_dict, self._unpack)

    def __getstate__(self) -> dict[str, Any]:
        keep = ("inner", *self._settings)
        return {**super().__getstate__(), **{key: getattr(self, key) for key in keep}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.param_groups = self.inner.param_groups

    # -- for subclasses ------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        """The settings a checkpoint must be resumed with."""
        raise NotImplementedError

    def _restore(self, value: Any, param: Tensor) -> Any:
        """A saved per-parameter state value, put back for ``param``."""
        return value

    def _evaluate_once(self, closure: Callable[[], Any] | None,
                       ) -> tuple[Any, Callable[[], Any] | None]:
        """``(loss, closure)``: an inner optimizer that evaluates a closure once, before its
        update, steps the same on the gradients the closure left, so it is evaluated here
        (its loss returned, the closure then ``None``); any other keeps its closure."""
        if closure is not None and type(self.inner) in SINGLE_PASS_OPTIMIZERS:
            with torch.enable_grad():
                return closure(), None
        return None, closure

    def _params(self) -> list[Tensor]:
        return list(chain.from_iterable(group["params"] for group in self.param_groups))

    def _pack(self) -> dict[str, Any]:
        index = {id(p): i for i, p in enumerate(self._params())}
        # As torch.optim packs state: a parameter's entry under its index, any other key as it
        # is; a tensor that is no longer a parameter (its group was removed) has no index.
        packed = {
            (index[id(key)] if isinstance(key, Tensor) else key): dict(value)
            for key, value in self.state.items()
            if not isinstance(key, Tensor) or id(key) in index
        }
        inner = self.inner.state_dict()
        return {
            "state": packed,
            "param_groups": inner["param_groups"],
            "inner": inner,
            "config": self._config(),
        }

    def _unpack(self, state_dict: dict[str, Any]) -> None:
        missing = {"inner", "state", "config"} - set(state_dict)
        if missing:
            raise ValueError(f"Not a {type(self).__name__} state_dict: missing {sorted(missing)}")
        ours = self._config()
        for key, saved in state_dict["config"].items():
            if ours.get(key) != saved:
                raise ValueError(
                    f"Invalid state_dict: saved with {key}={saved!r}, this optimizer has "
                    f"{key}={ours.get(key)!r}"
                )
        params = self._params()
        for i in state_dict["state"]:
            if is_index(i) and not 0 <= i < len(params):
                raise ValueError(f"Invalid state_dict: parameter index {i} of {len(params)}")
        inner = state_dict["inner"]
        if "param_groups" in state_dict:  # the top-level groups rule (checkpoints before lack them)
            inner = {**inner, "param_groups": state_dict["param_groups"]}
        self.inner.load_state_dict(inner)
        # torch's load_state_dict rebuilds the inner's group list: share the new one.
        self.param_groups = self.inner.param_groups
        params = self._params()
        self.state = defaultdict(dict)
        for i, saved_state in state_dict["state"].items():
            if not is_index(i):
                self.state[i] = dict(saved_state)  # as torch.optim keeps an entry of its own
                continue
            p = params[i]
            self.state[p] = {key: self._restore(value, p) for key, value in saved_state.items()}
