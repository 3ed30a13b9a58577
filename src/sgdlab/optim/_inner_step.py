"""The inner optimizer's step inside a wrapper's step: one user step fires the global hooks once.

``torch.optim`` runs the global step hooks (``register_optimizer_step_pre_hook`` and
``register_optimizer_step_post_hook``) and each optimizer's own step hooks around every
``step()``, through a wrapper it puts once on each optimizer class (``Optimizer.
profile_hook_step``). A wrapper optimizer (the proximal method, a distributed algorithm) is an
optimizer whose step calls its inner optimizer's: called plainly, the inner step would fire
the global hooks a second time for the same user step, handed the inner optimizer.

:func:`inner_step` runs the inner optimizer's own step *body* with the hooks registered on
that instance, before and after it as torch orders them, but not the global ones, which the
wrapper's own step has fired for this user step. The inner's own hooks stay: whoever
registered them on that optimizer asked to see each of its steps (a gradient clipper, a
logger), and it does take one step per user step.

:func:`hooked_state_dict` and :func:`hooked_load_state_dict` run the state-dict hooks registered
on a wrapper around its own ``state_dict``/``load_state_dict``, as torch's do around theirs.

An LR scheduler belongs on the wrapper (the parameter groups are shared): one built on the inner
optimizer would not see the inner step, and would warn that ``lr_scheduler.step()`` came first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["hooked_load_state_dict", "hooked_state_dict", "inner_step"]


def inner_step(optimizer: Optimizer, closure: Callable[[], Any] | None = None) -> Any:
    """``optimizer.step(closure)`` with its own step hooks and without the global ones."""
    hooked = type(optimizer).step
    if not getattr(hooked, "hooked", False):  # not (yet) wrapped by torch: nothing to skip
        return optimizer.step() if closure is None else optimizer.step(closure)
    # What torch's profile_hook_step wrapped, one level down (not inspect.unwrap: the body may
    # be wrapped itself, e.g. by torch's _use_grad_for_differentiable).
    body: Callable[..., Any] = hooked.__wrapped__  # type: ignore[attr-defined]
    args: tuple[Any, ...] = (optimizer,) if closure is None else (optimizer, closure)
    kwargs: dict[str, Any] = {}
    # torch labels each step for its profiler; the label costs several microseconds even with
    # no profiler on, as much as a small wrapper's own bookkeeping, so the inner step (inside
    # the wrapper's labelled step) is labelled only while a profiler records.
    label = (torch.autograd.profiler.record_function(f"Optimizer.step#{type(optimizer).__name__}"
                                                     ".step")
             if torch._C._autograd._profiler_enabled() else contextlib.nullcontext())
    with label:
        for pre_hook in list(optimizer._optimizer_step_pre_hooks.values()):
            result = pre_hook(optimizer, args, kwargs)
            if result is not None:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RuntimeError(
                        f"{pre_hook} must return None or a tuple of (new_args, new_kwargs), "
                        f"but got {result}"
                    )
                args, kwargs = result
        out = body(*args, **kwargs)
        optimizer._optimizer_step_code()
        for post_hook in list(optimizer._optimizer_step_post_hooks.values()):
            post_hook(optimizer, args, kwargs)
    return out


def hooked_state_dict(optimizer: Optimizer, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``build()``, the wrapper's state dict, with its state-dict pre and post hooks around it."""
    for pre_hook in optimizer._optimizer_state_dict_pre_hooks.values():
        pre_hook(optimizer)
    state_dict = build()
    for post_hook in optimizer._optimizer_state_dict_post_hooks.values():
        result = post_hook(optimizer, state_dict)
        if result is not None:
            state_dict = result
    return state_dict


def hooked_load_state_dict(
    optimizer: Optimizer, state_dict: dict[str, Any], load: Callable[[dict[str, Any]], None]
) -> None:
    """``load(state_dict)`` (on a shallow copy) with the wrapper's load hooks around it."""
    state_dict = dict(state_dict)
    for pre_hook in optimizer._optimizer_load_state_dict_pre_hooks.values():
        result = pre_hook(optimizer, state_dict)
        if result is not None:
            state_dict = dict(result)
    load(state_dict)
    for post_hook in optimizer._optimizer_load_state_dict_post_hooks.values():
        post_hook(optimizer)
