r"""Proximal small-batch training: a trajectory-regularising wrapper of any optimizer.

Zhang, Qu, Metaxas and Chen, "Taming the noisy gradient: train deep neural networks with small
batch sizes" (IJCAI 2019; their TRSGD and TRAdam). Training is cut into windows of ``S`` steps.
At the start of window ``w`` the current iterate becomes the *anchor* :math:`\tilde\theta_w`,
and the ``S`` steps of the window minimise the proximal objective

.. math::

    F_w(\theta) = f(\theta) + \lambda \lVert \theta - \tilde\theta_w \rVert^2 ,

which is :math:`(2\lambda - L)`-strongly convex when :math:`f` is :math:`L`-smooth and
:math:`2\lambda > L`, so noisy small-batch gradients cannot drag the iterate far from the anchor.
For a strongly convex problem SGD wants a step :math:`\propto 1/k`, so inside the window the step
at position :math:`k = 0, \dots, S-1` is

.. math::

    \eta_k = \frac{\eta}{k + 1} \qquad (\texttt{inner\_decay="harmonic"}),

with :math:`\eta` the group's learning rate as an outer scheduler sets it
(``inner_decay="none"`` keeps :math:`\eta_k = \eta`). With plain SGD as the inner optimizer
(coupled mode, below), one step reads

.. math::

    \theta_{t+1} = \theta_t - \eta_k \bigl(g_t + 2\lambda_t (\theta_t - \tilde\theta_w)\bigr),

where :math:`g_t` is the stochastic gradient. At :math:`k = 0` the anchor *is* the iterate, so
the coupled term vanishes and the first step of every window is a plain inner step.

Two ways to combine the term with the inner optimizer :math:`\mathcal{A}`:

* ``coupled=True`` (TRSGD/TRAdam): the inner optimizer steps on the proximal gradient
  :math:`g_t + 2\lambda_t(\theta_t - \tilde\theta_w)`, so momentum averages it and Adam
  rescales it.
* ``coupled=False``: the inner step sees :math:`g_t` only, then an explicit proximal step pulls
  the result toward the anchor: :math:`\theta \leftarrow \theta - \eta_k\, 2\lambda_t
  (\theta - \tilde\theta_w)` (as AdamW decouples weight decay from Adam).

The weight is :math:`\lambda_t = \lambda` (``lam_schedule="constant"``), or grows as an outer
scheduler decays the learning rate :math:`\eta_t` (not the in-window :math:`\eta_k`):
:math:`\lambda_t = \lambda\,\eta_0/\eta_t` (``"authors"``, as the reference code
``huiqu18/TRAlgorithm`` runs it with :math:`\lambda = 0.1`; :math:`\eta_0` is the group's
learning rate when the wrapper adopted it, kept as ``prox_lr0``) or :math:`\lambda/\eta_t`
(``"inverse_lr"``, the same with :math:`\lambda` in units of :math:`\eta_0`). Either is 0 while
:math:`\eta_t = 0`. With SGD the pull :math:`\eta_k 2\lambda_t = 2\lambda\eta_0/(k+1)` is then
independent of the decay.

The window runs on across epochs (every ``window`` steps), or, as the authors' loop does it,
restarts at the first step of every epoch (``epoch_steps``, the steps of one epoch; the last
window of an epoch is then cut short), or whenever :meth:`Proximal.restart_window` is called.

Faithfulness: with ``lam_schedule="authors"``, ``lam=0.1`` and ``epoch_steps`` the epoch's
length, ``Proximal(SGD)`` is the authors' TRSGD (to rounding: where exact, the coupled term
enters through the inner optimizer's L2 weight decay, one pass instead of two) and
``Proximal(Adam)`` their TRAdam but for where :math:`\epsilon` enters (they add it to
:math:`\sqrt{v}` before the bias correction, torch after). The registry's ``prox-sgd`` and
``prox-adam`` keep a constant, weak default instead (``sgdlab.optim.PROX_DEFAULTS`` says why).

A group that *maximizes* climbs :math:`f(\theta) - \lambda \lVert \theta - \tilde\theta_w
\rVert^2` (the term pulls toward the anchor either way). Coupled mode refuses sparse gradients
(the term is dense); decoupled mode takes them where the inner optimizer does.

State: per parameter, ``anchor``; global, ``window_pos`` (:math:`k`) and ``step``, kept under
the first parameter (see :meth:`Proximal._global_state`); per group ``prox_lam`` and
``prox_lr0``. ``state_dict()`` has torch's ``state`` and ``param_groups`` at the top and the
inner's own state dict beside them, so a checkpoint taken mid-window resumes exactly.

Hooks: one :meth:`~Proximal.step` is one user step: the global and this wrapper's step hooks fire
once, handed the wrapper; the inner step fires its own only (:mod:`sgdlab.optim._inner_step`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from sgdlab.optim._inner_step import inner_step
from sgdlab.optim._proximal_kernels import (
    INNER_DECAYS,
    LAM_SCHEDULES,
    SETTINGS,
    anchor_gradients,
    ascent_sign,
    cast_like,
    check_lam,
    check_settings,
    folds_into_weight_decay,
    lr_pull,
    proximal_gradients,
    pull_toward_anchors,
    put_back,
    refuse_sparse,
    restore_lrs,
    scale_lrs,
    scratch_like,
    warn_if_overshooting,
)
from sgdlab.optim._wrapper import InnerWrapper

__all__ = ["INNER_DECAYS", "LAM_SCHEDULES", "SETTINGS", "Proximal"]


class Proximal(InnerWrapper):
    r"""Wrap an optimizer so each window of ``window`` steps solves a proximal problem.

    Args:
        inner: an already-constructed optimizer over the parameters to train. The wrapper's
            ``param_groups`` *are* the inner's (the same list), so LR schedulers built on the
            wrapper, ``zero_grad`` and ``add_param_group`` all act on the inner optimizer.
        lam: proximal weight :math:`\lambda \ge 0` (per group as ``prox_lam``; a group may set
            its own).
        window: steps per window :math:`S \ge 1`; the anchor is reset every ``window`` steps.
        inner_decay: ``"harmonic"`` scales the inner learning rate by :math:`1/(k+1)` for the
            step at window position :math:`k` (and restores it after the step); ``"none"``.
        coupled: add :math:`2\lambda_t(\theta - \tilde\theta)` to the gradient the inner
            optimizer sees (``True``), or take the proximal step after the inner step.
        lam_schedule: ``"constant"`` (:math:`\lambda_t = \lambda`), ``"authors"``
            (:math:`\lambda\eta_0/\eta_t`) or ``"inverse_lr"`` (:math:`\lambda/\eta_t`).
        epoch_steps: ``None`` (the window runs on), or the steps of one epoch: the window
            restarts at every step that is a multiple of it (counted by :meth:`step`, from the
            first), as the authors restart it at every epoch.
        foreach: use the multi-tensor ``torch._foreach_*`` kernels for the proximal term;
            ``False`` runs the per-tensor loop that specifies them. ``None`` (default) chooses
            as ``torch.optim`` does: foreach when the parameters are not on the CPU, where the
            loop (few large tensors, no temporaries) measures faster.

    Preconditions, as for any optimizer: gradients are in ``p.grad`` when :meth:`step` is
    called (``loss.backward(); opt.step()``), or ``step(closure)`` computes them. Coupled mode
    hands the inner optimizer temporary gradient tensors and puts the caller's gradients back
    afterwards, so ``p.grad`` never carries the proximal term outside :meth:`step`; the
    temporaries are one scratch buffer per parameter, reused every step (allocating them anew
    costs more than the arithmetic on a CPU), so the inner optimizer must not keep a reference
    to ``p.grad`` past its step (``torch.optim``'s optimizers copy what they keep). With a
    closure, the inner optimizer sees the proximal objective :math:`F_w` (loss and gradient,
    as a line search needs), and :meth:`step` returns the closure's own first loss; torch's
    first-order optimizers, which call the closure once and read no loss, are handed the
    gradients it left instead (the same step, without computing the penalty).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> opt = Proximal(torch.optim.SGD([w], lr=0.1), lam=0.5, window=4)
        >>> for _ in range(6):
        ...     opt.zero_grad()
        ...     (w ** 2).sum().backward()
        ...     _ = opt.step()
        >>> opt.param_groups is opt.inner.param_groups
        True
        >>> opt.state[w]["window_pos"], opt.state[w]["step"]
        (2, 6)
        >>> bool(w.abs().max() < 1.0)
        True
    """

    _settings = SETTINGS

    def __init__(
        self,
        inner: Optimizer,
        *,
        lam: float,
        window: int = 10,
        inner_decay: str = "harmonic",
        coupled: bool = True,
        lam_schedule: str = "constant",
        epoch_steps: int | None = None,
        foreach: bool | None = None,
    ) -> None:
        if not isinstance(inner, Optimizer):
            raise TypeError(f"Invalid inner: expected a torch.optim.Optimizer, got {inner!r}")
        check_lam(lam)
        check_settings(window, inner_decay, coupled, lam_schedule, epoch_steps, foreach)
        self.window = window
        self.inner_decay = inner_decay
        self.coupled = coupled
        self.lam_schedule = lam_schedule
        self.epoch_steps = epoch_steps
        self.foreach = foreach
        # Scratch for the coupled gradients: not state (rebuilt each step), never checkpointed.
        self._scratch: dict[Tensor, Tensor] = {}
        super().__init__(inner, {**inner.defaults, "prox_lam": lam})  # shares inner's groups
        pulls = [lr_pull(self.coupled, self.inner_decay) * float(group["lr"]) * 2.0
                 * self._lam_t(group) for group in self.param_groups]
        if not (self.coupled and (window == 1 or not isinstance(inner, torch.optim.SGD))):
            warn_if_overshooting(max(pulls, default=0.0))

    # -- the Optimizer contract -------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer (and so to this one); ``prox_lam`` defaults."""
        param_group.setdefault("prox_lam", self.defaults["prox_lam"])
        check_lam(param_group["prox_lam"])
        super().add_param_group(param_group)
        # eta_0 of lam_schedule="authors": the lr a scheduler started from, else today's.
        param_group.setdefault("prox_lr0", float(param_group.get("initial_lr", param_group["lr"])))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one proximal step of the inner optimizer; return the loss (or ``None``)."""
        # A single-pass inner optimizer only hands the closure's loss back: evaluated here, the
        # step skips the proximal penalty on a loss nobody reads (a pass over every parameter,
        # and a sync) and the coupled term at k == 0 (exactly zero).
        loss, closure = self._evaluate_once(closure)
        if self.coupled and closure is None:
            # Refused at every step, before anything moves: the term is zero at k == 0, so
            # the inner optimizer alone would otherwise take a sparse gradient there.
            refuse_sparse(self._params())
        glob = self._global_state()
        if self.epoch_steps is not None and glob["step"] % self.epoch_steps == 0:
            glob["window_pos"] = 0
        k = glob["window_pos"]
        if k == 0:
            self._reset_anchors()
        lams = [self._lam_t(group) for group in self.param_groups]
        lrs = [float(group["lr"]) for group in self.param_groups]
        prox_on = any(lam != 0.0 for lam in lams)
        scale = 1.0 / (k + 1) if self.inner_decay == "harmonic" else 1.0
        saved_lrs = scale_lrs(self.param_groups, scale)
        try:
            # At k == 0 every anchor equals its parameter, so one gradient's coupled term is
            # exactly zero; not so for a closure evaluated again after the iterate has moved
            # (LBFGS), nor for the decoupled pull, which acts after the inner step.
            if self.coupled and prox_on and (k > 0 or closure is not None):
                inner_loss = self._coupled_inner_step(lams, closure)
            else:
                inner_loss = inner_step(self.inner, closure)
            if not self.coupled and prox_on:
                self._proximal_step(lams, [lr * scale for lr in lrs])
        finally:
            restore_lrs(saved_lrs)
        glob["window_pos"] = (k + 1) % self.window
        glob["step"] += 1
        return loss if loss is not None else inner_loss

    def restart_window(self) -> None:
        """Start a new window at the next :meth:`step` (it re-anchors, at position 0): for a
        loop with epochs of varying length (``epoch_steps`` does it for a fixed length)."""
        self._global_state()["window_pos"] = 0

    def state_dict(self) -> dict[str, Any]:
        """Return ``{"state": ..., "param_groups": ..., "inner": ..., "config": ...}``.

        torch's format at the top: ``state`` maps parameter indices (in group order, as
        ``torch.optim`` numbers them) to this wrapper's per-parameter state (anchors; window
        position and step count under index 0), and any entry not keyed by a parameter as it
        is; ``param_groups`` are the shared groups, packed as torch packs them. ``inner`` is
        the inner optimizer's own state dict, whose ``param_groups`` are the same list
        (stored once); ``config`` names the settings a checkpoint must be resumed with.
        Tensors are references, as in ``torch.optim``: save or copy the dict before stepping.
        """
        return super().state_dict()

    def _restore(self, value: Any, param: Tensor) -> Any:
        return cast_like(value, param)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._scratch = {}

    # -- the method ----------------------------------------------------------------------

    def _global_state(self) -> dict[str, Any]:
        # Window position and step count belong to the optimizer, not to one tensor; keeping
        # them in ``self.state`` under the first parameter (as torch.optim.LBFGS does) is what
        # makes them travel with state_dict() and load_state_dict().
        state = self.state[self.param_groups[0]["params"][0]]
        state.setdefault("window_pos", 0)
        state.setdefault("step", 0)
        return state

    def _config(self) -> dict[str, Any]:
        return {
            "inner": type(self.inner).__name__,
            "window": self.window,
            "inner_decay": self.inner_decay,
            "coupled": self.coupled,
            "lam_schedule": self.lam_schedule,
            "epoch_steps": self.epoch_steps,
        }

    def _lam_t(self, group: dict[str, Any]) -> float:
        lam = float(group.get("prox_lam", self.defaults["prox_lam"]))
        if self.lam_schedule == "constant":
            return lam
        lr = float(group["lr"])
        if lr == 0.0:
            return 0.0
        lr0 = group.setdefault("prox_lr0", float(group.get("initial_lr", lr)))  # old checkpoints
        return lam * float(lr0) / lr if self.lam_schedule == "authors" else lam / lr

    def _reset_anchors(self) -> None:
        stale: list[Tensor] = []
        fresh: list[Tensor] = []
        # Every parameter, with a gradient or not: under step(closure) the gradients do not
        # exist yet when the window starts.
        for p in self._params():
            state = self.state[p]
            if "anchor" in state:
                stale.append(state["anchor"])
                fresh.append(p)
            else:
                state["anchor"] = p.detach().clone(memory_format=torch.preserve_format)
        if not stale:
            return
        if self._use_foreach():
            torch._foreach_copy_(stale, fresh)
        else:
            for anchor, p in zip(stale, fresh, strict=True):
                anchor.copy_(p)

    def _anchored(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        """The group's parameters that have a gradient, and their anchors.

        A parameter first seen mid-window (added by ``add_param_group``) is anchored where it
        stands then: for the rest of that window it is pulled back toward that point.
        """
        params: list[Tensor] = []
        anchors: list[Tensor] = []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "anchor" not in state:
                state["anchor"] = p.detach().clone(memory_format=torch.preserve_format)
                continue
            params.append(p)
            anchors.append(state["anchor"])
        return params, anchors

    def _use_foreach(self) -> bool:
        if self.foreach is not None:
            return self.foreach
        return self.param_groups[0]["params"][0].device.type != "cpu"

    def _coupled_inner_step(self, lams: list[float], closure: Callable[[], Any] | None) -> Any:
        swapped: list[tuple[Tensor, Tensor]] = []
        if closure is None:
            folded: list[tuple[dict[str, Any], Any]] = []
            swapped = self._add_proximal_gradient(lams, folded)
            try:
                return inner_step(self.inner)
            finally:
                put_back(swapped)
                for group, weight_decay in folded:
                    group["weight_decay"] = weight_decay
        first_loss: list[Any] = []

        def proximal_closure() -> Any:
            # The caller's closure zeroes and fills its own gradient tensors, not our scratch.
            put_back(swapped)
            swapped.clear()
            loss = closure()
            with torch.no_grad():
                swapped[:] = self._add_proximal_gradient(lams)
                penalty = self._penalty(lams)
            if not first_loss:
                first_loss.append(loss)
            return None if loss is None else loss + penalty

        try:
            inner_loss = inner_step(self.inner, proximal_closure)
        finally:
            put_back(swapped)
        return first_loss[0] if first_loss else inner_loss

    def _add_proximal_gradient(
        self, lams: list[float], folded: list[tuple[dict[str, Any], Any]] | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """Point each ``p.grad`` at ``g + 2 lam_t (p - anchor)``; return ``(p, g)`` to restore.

        Handed ``folded``, a group whose inner optimizer adds ``weight_decay * p`` to the
        gradient before anything else (:func:`folds_into_weight_decay`) gets ``g - 2 lam_t
        anchor`` and ``weight_decay + 2 lam_t``, the same gradient in one pass instead of two;
        ``(group, weight_decay)`` goes into ``folded`` to be put back after the step.
        """
        swapped: list[tuple[Tensor, Tensor]] = []
        fold = folded is not None and folds_into_weight_decay(self.inner)
        for group, lam in zip(self.param_groups, lams, strict=True):
            if lam == 0.0:
                continue
            params, anchors = self._anchored(group)
            grads: list[Tensor] = [p.grad for p in params]  # type: ignore[misc]  # not None
            refuse_sparse(params)
            coef, foreach = ascent_sign(group) * 2.0 * lam, self._use_foreach()
            # Weight decay reaches every parameter with a gradient: not one anchored just now.
            folds = fold and len(params) == sum(p.grad is not None for p in group["params"])
            bufs = [] if folds and foreach else [  # the foreach fold returns fresh tensors
                scratch_like(self._scratch, p, g) for p, g in zip(params, grads, strict=True)]
            if folds and folded is not None:
                # maximize negates the gradient before adding weight_decay * p: the anchor's
                # sign follows the ascent sign, the fold's does not.
                bufs = anchor_gradients(grads, anchors, bufs, coef, foreach)
                folded.append((group, group["weight_decay"]))
                group["weight_decay"] = group["weight_decay"] + 2.0 * lam
            else:
                proximal_gradients(params, grads, anchors, bufs, coef, foreach)
            for p, g, buf in zip(params, grads, bufs, strict=True):
                swapped.append((p, g))
                p.grad = buf
        return swapped

    def _penalty(self, lams: list[float]) -> float:
        total = 0.0
        for group, lam in zip(self.param_groups, lams, strict=True):
            if lam == 0.0:
                continue
            params, anchors = self._anchored(group)
            squares = [(p - a).square().sum() for p, a in zip(params, anchors, strict=True)]
            total += ascent_sign(group) * lam * float(sum(squares))
        return total

    def _proximal_step(self, lams: list[float], step_sizes: list[float]) -> None:
        for group, lam, eta in zip(self.param_groups, lams, step_sizes, strict=True):
            if lam == 0.0:
                continue
            params, anchors = self._anchored(group)
            pull_toward_anchors(params, anchors, eta * 2.0 * lam, self._use_foreach())
