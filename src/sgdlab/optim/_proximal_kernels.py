"""The proximal wrapper's kernels and small helpers (:mod:`sgdlab.optim.proximal`).

The per-tensor loop of each kernel is its specification; the ``foreach`` path must match it
(``tests/optim/test_proximal.py``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

INNER_DECAYS = ("harmonic", "none")
LAM_SCHEDULES = ("constant", "inverse_lr", "authors")
# The keyword arguments of Proximal besides lam: make_proximal hands the rest to the inner.
SETTINGS = ("window", "inner_decay", "coupled", "lam_schedule", "epoch_steps", "foreach")


def check_settings(window: Any, inner_decay: Any, coupled: Any, lam_schedule: Any,
                   epoch_steps: Any, foreach: Any) -> None:
    """Raise ``ValueError`` naming the first of Proximal's settings that is out of range."""
    for name, value in (("window", window), ("epoch_steps", epoch_steps)):
        if value is None and name == "epoch_steps":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            extra = ", or None" if name == "epoch_steps" else ""
            raise ValueError(f"Invalid {name}: {value} (an integer >= 1{extra})")
    for name, value, allowed in (("inner_decay", inner_decay, INNER_DECAYS),
                                 ("lam_schedule", lam_schedule, LAM_SCHEDULES)):
        if value not in allowed:
            raise ValueError(f"Invalid {name}: {value!r} (allowed: {quoted_names(allowed)})")
    if not isinstance(coupled, bool):
        raise ValueError(f"Invalid coupled: {coupled!r} (True or False)")
    if foreach is not None and not isinstance(foreach, bool):
        raise ValueError(f"Invalid foreach: {foreach!r} (True, False or None)")


def proximal_gradients(params: list[Tensor], grads: list[Tensor], anchors: list[Tensor],
                        out: list[Tensor], coef: float, foreach: bool) -> None:
    """Write ``g + coef * (p - anchor)`` into ``out``, leaving ``g`` untouched."""
    if not params:
        return
    if foreach:
        # foreach kernels have no out=: build the term in place in ``out``.
        torch._foreach_copy_(out, params)
        torch._foreach_sub_(out, anchors)
        torch._foreach_mul_(out, coef)
        torch._foreach_add_(out, grads)
        return
    for p, g, a, buf in zip(params, grads, anchors, out, strict=True):
        torch.sub(p, a, out=buf)
        torch.add(g, buf, alpha=coef, out=buf)


def anchor_gradients(grads: list[Tensor], anchors: list[Tensor], out: list[Tensor], coef: float,
                     foreach: bool) -> list[Tensor]:
    """``g - coef * anchor`` in one pass: the proximal gradient less its ``coef * p`` part,
    which the inner optimizer's weight decay then adds. Written into ``out`` by the loop; the
    foreach kernel, which has no ``out=``, returns fresh tensors (``out`` is not read)."""
    if foreach:
        return list(torch._foreach_add(grads, anchors, alpha=-coef)) if grads else []
    for g, a, buf in zip(grads, anchors, out, strict=True):
        torch.add(g, a, alpha=-coef, out=buf)
    return out


# torch optimizers whose weight_decay adds weight_decay * p to the (maximize-negated) gradient
# before their update reads it (L2, not AdamW's decoupled decay).
_L2_DECAY = (torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop, torch.optim.Adagrad)


def folds_into_weight_decay(inner: torch.optim.Optimizer) -> bool:
    """Whether ``2 lam (p - anchor)`` can enter ``inner`` as weight decay plus ``-2 lam anchor``.

    Exactly these classes (a subclass may change the update), every group's ``weight_decay`` a
    float and, for Adam, not decoupled.
    """
    return type(inner) in _L2_DECAY and all(
        isinstance(group.get("weight_decay"), float | int)
        and not group.get("decoupled_weight_decay", False)
        for group in inner.param_groups
    )


def pull_toward_anchors(params: list[Tensor], anchors: list[Tensor], pull: float,
                         foreach: bool) -> None:
    """In place ``p <- p - pull * (p - anchor)``, that is ``p <- lerp(p, anchor, pull)``.

    One read of ``p`` and ``anchor`` and one write, with no temporary.
    """
    if not params:
        return
    if foreach:
        torch._foreach_lerp_(params, anchors, pull)
        return
    for p, a in zip(params, anchors, strict=True):
        p.lerp_(a, pull)


def ascent_sign(group: dict[str, Any]) -> float:
    """-1 for a group the inner optimizer maximizes: it then climbs ``f - lam |theta - a|^2``,
    whose gradient ``g - 2 lam (theta - a)`` still pulls toward the anchor."""
    return -1.0 if group.get("maximize", False) else 1.0


def refuse_sparse(params: list[Tensor]) -> None:
    if any(p.grad is not None and p.grad.is_sparse for p in params):
        raise RuntimeError(
            "Proximal(coupled=True) does not support sparse gradients: the proximal term "
            "2 lam (theta - anchor) is dense (coupled=False takes them where the inner "
            "optimizer does)"
        )


def put_back(swapped: list[tuple[Tensor, Tensor]]) -> None:
    for p, g in swapped:
        p.grad = g


def cast_like(value: Any, param: Tensor) -> Any:
    if isinstance(value, Tensor):
        return value.to(device=param.device, dtype=param.dtype, copy=True)
    return value


def check_lam(lam: Any) -> None:
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not 0 <= lam < math.inf:
        raise ValueError(f"Invalid lam: {lam}")


def quoted_names(allowed: tuple[str, ...]) -> str:
    return ", ".join(repr(name) for name in allowed)


def scale_lrs(groups: list[dict[str, Any]], scale: float) -> list[tuple[dict[str, Any], Any, Any]]:
    """Multiply every group's ``lr`` by ``scale``; return what :func:`restore_lrs` needs."""
    if scale == 1.0:
        return []
    saved = [(group, group["lr"], group["lr"] * scale) for group in groups]
    for group, _, scaled in saved:
        group["lr"] = scaled
    return saved


def restore_lrs(saved: list[tuple[dict[str, Any], Any, Any]]) -> None:
    for group, lr, scaled in saved:
        # An inner optimizer that sets its own lr during the step (learning-rate-free
        # methods do) keeps what it set; otherwise the scheduled value comes back.
        if group["lr"] is scaled:
            group["lr"] = lr


def lr_pull(coupled: bool, inner_decay: str) -> float:
    """The largest in-window lr factor the pull meets: 1 at k = 0 (decoupled), 1/2 at k = 1
    (coupled: the term is zero at k = 0) under the harmonic decay."""
    return 0.5 if coupled and inner_decay == "harmonic" else 1.0


def warn_if_overshooting(pull: float) -> None:
    """Warn when the pull toward the anchor, ``eta_k 2 lam_t (theta - anchor)`` for coupled SGD
    and any decoupled inner optimizer, jumps past the anchor (a factor >= 1). Adaptive inner
    optimizers rescale the coupled term, so their callers do not ask."""
    if pull >= 1.0:
        warnings.warn(
            f"Proximal: the pull toward the anchor, lr * 2 * lam_t = {pull:g} at its largest, "
            "overshoots the anchor; lower lam or lr",
            stacklevel=3,
        )


def scratch_like(cache: dict[Tensor, Tensor], p: Tensor, g: Tensor) -> Tensor:
    """``p``'s scratch buffer in ``cache``, (re)made when it no longer fits ``g``."""
    buf = cache.get(p)
    if buf is None or buf.shape != g.shape or buf.dtype != g.dtype or buf.device != g.device:
        buf = cache[p] = torch.empty_like(g, memory_format=torch.preserve_format)
    return buf
