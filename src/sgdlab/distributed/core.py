r"""The cooperative-SGD core every distributed algorithm is built on.

Wang and Joshi's cooperative SGD view: each worker :math:`i` takes local steps of its own
optimizer on :math:`x_i`, and every :math:`\tau` steps a communication round mixes the workers'
models, possibly through extra (anchor) variables :math:`z`. :class:`CooperativeSGD` owns what
every algorithm shares:

* the inner optimizer (any ``torch.optim.Optimizer``; its ``param_groups`` are this wrapper's,
  so LR schedulers act on them);
* the model's synchronised tensors: its parameters and floating-point buffers (BatchNorm
  statistics), broadcast from rank 0 when the wrapper is built;
* the step counter and the round trigger (after every ``tau``-th local step);
* the clocks. A round's wall time runs from the end of the previous round to the end of this
  one; the part spent blocked in a collective is ``wait_seconds``, the rest ``compute_seconds``
  (forward, backward, the inner step, any injected straggling). ``comm_seconds`` is how long
  the collectives that completed in the round took from issue to completion; the part not
  waited for was hidden behind computation, so

  .. math:: \text{wall} = \text{compute} + \text{wait}, \qquad
            \text{hidden fraction} = 1 - \frac{\sum \text{wait}}{\sum \text{comm}}.

* ``state_dict()``: the inner optimizer's, plus a ``"cooperative"`` entry with the step counter
  and the algorithm's own tensors. A collective still in flight is waited for and its result
  stored, so a loaded wrapper continues exactly as the saved one would have. Deep copies and
  pickles wait for it the same way (a collective's handle cannot be copied);
* hooks, as for any optimizer: one ``step()`` is one user step, so the global step hooks and
  this wrapper's own fire once, handed the wrapper; the inner optimizer steps without the
  global hooks but with its own (:func:`sgdlab.optim._inner_step.inner_step`). The state-dict
  hooks registered on the wrapper run around its ``state_dict`` and ``load_state_dict``.

Complex parameters are averaged as their real views (``torch.view_as_real``): a mean over
ranks is the mean of the real and imaginary parts.

Subclasses implement :meth:`_round` (and :class:`SyncSGD` :meth:`_local_step`).
Preconditions of ``step()``: gradients are in ``.grad`` (``loss.backward()`` ran), as for any
optimizer; every rank calls ``step()`` the same number of times.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sgdlab.distributed.comm import Comm, Handle
from sgdlab.distributed.flat import flat_buffer
from sgdlab.optim._inner_step import hooked_load_state_dict, hooked_state_dict, inner_step


@dataclass
class RoundStats:
    """The clock of one communication round (seconds)."""

    round: int
    step: int
    compute_seconds: float
    comm_seconds: float
    wait_seconds: float


class CooperativeSGD(torch.optim.Optimizer):
    """Local steps of ``inner`` on ``model``; a communication round every ``tau`` steps."""

    def __init__(
        self, model: nn.Module, inner: torch.optim.Optimizer, tau: int = 1, comm: Comm | None = None
    ) -> None:
        if not isinstance(inner, torch.optim.Optimizer):
            raise ValueError(f"Invalid inner optimizer: {type(inner).__name__} is not an Optimizer")
        if isinstance(tau, bool) or not isinstance(tau, int) or tau < 1:
            raise ValueError(f"Invalid tau: {tau}")
        model_params = {id(p) for p in model.parameters()}
        inner_params = [p for g in inner.param_groups for p in g["params"]]
        if any(id(p) not in model_params for p in inner_params):
            raise ValueError("Invalid inner optimizer: it holds parameters not in the model")
        super().__init__(inner_params, dict(inner.defaults))
        self.inner = inner
        self.param_groups = inner.param_groups
        self.defaults = inner.defaults
        self.model = model
        self.tau = tau
        self.comm = comm or Comm()
        self.tensors: list[torch.Tensor] = [real_view(p) for p in model.parameters()] + [
            b for b in model.buffers() if b.is_floating_point()
        ]
        self.comm.broadcast_(self.tensors)
        self.local_steps = 0
        self.rounds: list[RoundStats] = []
        self._round_start: float | None = None
        self._last_step_end = 0.0
        self._round_wait = 0.0
        self._round_comm = 0.0
        self._inflight: list[Handle] = []
        self._flat_buffers: dict[tuple[Any, ...], torch.Tensor] = {}
        self._pause_depth = 0

    # --- the loop -------------------------------------------------------------------------

    def start_clock(self) -> None:
        """Start the clocks now (else they start at the first ``step()``)."""
        self._round_start = self._last_step_end = time.perf_counter()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One local step of the inner optimizer; a communication round after every ``tau``-th."""
        if self._round_start is None:
            self.start_clock()
        round_start = self._round_start or time.perf_counter()
        loss = self._local_step(closure)
        self.local_steps += 1
        self.comm.straggle(time.perf_counter() - self._last_step_end)
        if self.local_steps % self.tau == 0:
            self._round()
            now = time.perf_counter()
            wall = now - round_start
            self.rounds.append(RoundStats(
                len(self.rounds) + 1, self.local_steps, wall - self._round_wait,
                self._round_comm, self._round_wait,
            ))
            self._round_start, self._round_wait, self._round_comm = now, 0.0, 0.0
        self._last_step_end = time.perf_counter()
        return loss

    def _local_step(self, closure: Callable[[], Any] | None) -> Any:
        with torch.enable_grad():
            return inner_step(self.inner, closure)

    def _round(self) -> None:
        raise NotImplementedError

    def _start(self, tensors: list[torch.Tensor]) -> Handle:
        # One flat buffer per size, reused round after round: every algorithm here uses a
        # round's average before it starts the next (at most one is in flight), and the
        # averages outside the rounds (evaluation, synchronize) take buffers of their own.
        key = (sum(t.numel() for t in tensors), tuple(t.dtype for t in tensors))
        buffer = self._flat_buffers.get(key)
        if buffer is None:
            buffer = self._flat_buffers[key] = flat_buffer(tensors)
        handle = self.comm.average(tensors, out=buffer)
        self._inflight.append(handle)
        return handle

    def _finish(self, handle: Handle) -> list[torch.Tensor]:
        """Wait for ``handle`` and charge its time to the current round."""
        means = handle.wait()
        self._inflight.remove(handle)
        self._round_wait += handle.wait_seconds
        self._round_comm += handle.comm_seconds
        return means

    def _average_now(self) -> list[torch.Tensor]:
        return self._finish(self._start(self.tensors))

    # --- outside the clock ----------------------------------------------------------------

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Exclude the block's time from every clock, in-flight collectives' deadlines included.

        Re-entrant: a pause inside a pause is part of the outer one, counted once."""
        if self._pause_depth:
            self._pause_depth += 1
            try:
                yield
            finally:
                self._pause_depth -= 1
            return
        t0 = time.perf_counter()
        self._pause_depth = 1
        try:
            yield
        finally:
            self._pause_depth = 0
            pause = time.perf_counter() - t0
            if self._round_start is not None:
                self._round_start += pause
            self._last_step_end += pause
            for handle in self._inflight:
                handle.issued += pause

    def averaged_tensors(self) -> list[torch.Tensor]:
        """The mean over ranks of the model's tensors, leaving every rank's state as it is.

        A collective (all ranks call it together) without injected delay, outside the clocks;
        for evaluating the consensus model during a run.
        """
        with self.paused():
            handle = self.comm.average(self.tensors, inject=False)
            return handle.wait()

    @torch.no_grad()
    def synchronize(self) -> None:
        """End of training: drop any in-flight collective and set every rank's model to the mean.

        Outside the clocks; afterwards all ranks hold the same model.
        """
        with self.paused():
            for handle in list(self._inflight):
                handle.wait()
                self._inflight.remove(handle)
            self._forget_pending()
            for t, m in zip(self.tensors, self.comm.average(self.tensors, inject=False).wait(),
                            strict=True):
                t.copy_(m)

    def _forget_pending(self) -> None:
        """Subclasses with collectives in flight across rounds drop them here."""

    def summary(self) -> dict[str, float]:
        """Totals over the run (a last, incomplete round included)."""
        rounds = list(self.rounds)
        if self._round_start is not None and self.local_steps % self.tau:
            wall = self._last_step_end - self._round_start
            rounds.append(RoundStats(len(rounds) + 1, self.local_steps, wall - self._round_wait,
                                     self._round_comm, self._round_wait))
        compute = sum(r.compute_seconds for r in rounds)
        comm = sum(r.comm_seconds for r in rounds)
        wait = sum(r.wait_seconds for r in rounds)
        return {
            "rounds": float(len(rounds)),
            "wall_seconds": compute + wait,
            "compute_seconds": compute,
            "comm_seconds": comm,
            "wait_seconds": wait,
            "hidden_fraction": hidden_fraction(comm, wait),
        }

    # --- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict plus ``"cooperative"``: counters and our tensors."""
        return hooked_state_dict(self, self._pack)

    def _pack(self) -> dict[str, Any]:
        state = self.inner.state_dict()
        state["cooperative"] = {"local_steps": self.local_steps, **self._extra_state()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        hooked_load_state_dict(self, state_dict, self._unpack)

    def _unpack(self, state: dict[str, Any]) -> None:
        if "cooperative" not in state:
            raise ValueError("Invalid state_dict: it has no 'cooperative' entry (not ours?)")
        extra = dict(state.pop("cooperative"))
        self.inner.load_state_dict(state)
        # load_state_dict gives the inner optimizer new param_groups; keep sharing them.
        self.param_groups = self.inner.param_groups
        self.local_steps = int(extra.pop("local_steps"))
        self._load_extra_state(extra)

    def __getstate__(self) -> dict[str, Any]:
        # All of it (torch's Optimizer keeps only defaults, state and param_groups, and a copy
        # could not step), but no hooks (they belong to this instance, as in torch) and no
        # handle of a collective in flight: it is waited for first, as a checkpoint does.
        self._settle()
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_optimizer_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.param_groups = self.inner.param_groups

    def _settle(self) -> None:
        """Subclasses with a collective in flight across steps wait for it here."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of the model's parameters to the inner optimizer (and so to this one)."""
        if not hasattr(self, "inner"):  # Optimizer.__init__ building our first group
            super().add_param_group(param_group)
            return
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        model_params = {id(p) for p in self.model.parameters()}
        if any(id(p) not in model_params for p in params):
            raise ValueError("Invalid param_group: it holds parameters not in the model")
        self.inner.add_param_group({**param_group, "params": params})

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)


def hidden_fraction(comm_seconds: float, wait_seconds: float) -> float:
    """The share of communication time not spent waiting (0.0 with no communication).

    >>> hidden_fraction(2.0, 0.5)
    0.75
    """
    if comm_seconds <= 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - wait_seconds / comm_seconds))


class InFlightAverage(CooperativeSGD):
    """A cooperative algorithm that keeps one average in flight from one round to the next
    (Overlap Local-SGD, CoCoD-SGD): it starts an all-reduce at the end of a round and takes
    its result at the end of the next. A checkpoint waits for it and stores the result."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handle: Handle | None = None
        self._result: list[torch.Tensor] | None = None  # a waited result not yet used

    @property
    def pending(self) -> bool:
        """Whether an average is in flight (or done and not yet applied)."""
        return self._handle is not None or self._result is not None

    def _take_result(self) -> list[torch.Tensor] | None:
        """The average started last round (waiting for it if need be), or None."""
        mean, self._result = self._result, None
        if self._handle is not None:
            mean, self._handle = self._finish(self._handle), None
        return mean

    def _forget_pending(self) -> None:
        self._handle, self._result = None, None

    def _settle(self) -> None:
        if self._handle is not None:
            with self.paused():
                self._result = self._handle.wait()
                self._inflight.remove(self._handle)
            self._handle = None

    def _pending_state(self) -> dict[str, Any]:
        self._settle()
        return {"pending": clone_all(self._result) if self._result is not None else None}

    def _load_pending_state(self, extra: dict[str, Any]) -> None:
        self._handle = None
        self._result = clone_all(extra["pending"]) if extra["pending"] is not None else None


def real_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or for a complex tensor its real view (same storage, a trailing 2)."""
    return torch.view_as_real(t.detach()) if t.is_complex() else t


def clone_all(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


def copy_all(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)
