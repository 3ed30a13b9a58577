"""The state layout of :class:`~sgdlab.optim.mlbfgs.MLBFGS`: where each block's history and the
global counters live in ``self.state``, checkpoints (old layouts converted on load), copies,
and the diagnostics read from it. The update itself is in :mod:`sgdlab.optim.mlbfgs`."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sgdlab.errors import CheckpointError
from sgdlab.optim._history import (
    COUNTERS,
    add_pairs,
    directions,
    from_list_layout,
    held,
    new_history,
    restore_dtypes,
)
from sgdlab.optim._records import Records

_BLOCK_KEY = "mlbfgs_block"
_GLOBAL_KEY = "mlbfgs_global"
_COUNTER_NAMES = {
    "accepted": "pairs_accepted",
    "damped": "pairs_damped",
    "rejected": "pairs_rejected",
    "nonfinite_resets": "nonfinite_resets",
    "nonfinite_grads": "nonfinite_grads",
}
# Options added after checkpoints were written, with the value that reproduces those runs.
_ADDED_OPTIONS = {"variant": "ours", "history_dtype": None, "secant": "averaged"}


def _saved_entries(state_dict: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """A checkpoint's state entries as saved (before torch's load casts them), by the position
    of their parameter in group order."""
    ids = [i for group in state_dict["param_groups"] for i in group["params"]]
    return {position: state_dict["state"].get(index, {}) for position, index in enumerate(ids)}


class BlockStateOptimizer(torch.optim.Optimizer):
    """An optimizer whose parameters are partitioned into blocks (``_blocks``), each with a
    curvature history under its first parameter, of which this rank owns ``_owned``."""

    _exchange: Any
    _blocks: list[list[int]]
    _owners: list[int]
    _owned: list[int]
    _records: Any  # the step's scratch (sgdlab.optim._records.Records), made at the first step

    def _index(self) -> None:
        """The lookups derived from the groups and the blocks (rebuilt after a copy)."""
        self._params: list[Tensor] = [p for g in self.param_groups for p in g["params"]]
        self._sizes = [sum(self._params[i].numel() for i in b) for b in self._blocks]
        # Where each parameter's slice of its block's flat direction lies, by its position in
        # group order (not by id(), which a copy or an unpickled optimizer does not keep).
        self._where: list[tuple[int, int]] = [(0, 0)] * len(self._params)
        for b, block in enumerate(self._blocks):
            offset = 0
            for i in block:
                self._where[i] = (b, offset)
                offset += self._params[i].numel()
        self._records = None

    def __getstate__(self) -> dict[str, Any]:
        """What :mod:`copy` and :mod:`pickle` keep: torch's three fields and the blocks.

        A sharded optimizer cannot be copied: its exchange is a live collective. Copy its
        ``state_dict()`` into a new optimizer built with the new exchange instead.
        """
        if self._exchange is not None:
            raise TypeError(
                "MLBFGS with an exchange (sharded blocks) cannot be copied or pickled; "
                "load its state_dict() into an optimizer built with its own exchange"
            )
        state = super().__getstate__()
        state.update(_blocks=self._blocks, _owners=self._owners, _owned=self._owned)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch's load_state_dict() comes through here too, with the exchange still in place.
        super().__setstate__(state)
        self.__dict__.setdefault("_exchange", None)
        self._index()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Only during construction: the blocks are fixed once built."""
        if hasattr(self, "_blocks"):
            raise ValueError("Invalid add_param_group: MLBFGS fixes its blocks at construction")
        super().add_param_group(param_group)

    @property
    def blocks(self) -> list[list[int]]:
        """The blocks, as lists of indices into the parameters in group order."""
        return [list(b) for b in self._blocks]

    @property
    def owners(self) -> list[int]:
        """The rank that owns each block."""
        return list(self._owners)

    def diagnostics(self) -> dict[str, Any]:
        """Counters summed over the blocks this rank owns, and the global step figures.

        ``step``; ``pairs_accepted`` (damped ones included), ``pairs_damped``,
        ``pairs_rejected``; ``nonfinite_resets`` (histories dropped for a non-finite pair or
        direction), ``nonfinite_grads`` (block-steps skipped for a non-finite gradient);
        ``history`` (pairs held, per owned block); ``direction_norm`` (the last
        direction's norm before clipping, over all blocks: the gradient's in the warm-up;
        NaN before the first step);
        ``clipped_steps``; ``blocks`` (how many) and ``owned_blocks``.
        """
        glob = self._global()
        out: dict[str, Any] = {
            "step": glob["step"],
            "direction_norm": float(glob["direction_norm"]),
            "clipped_steps": int(glob["clipped_steps"]),
        }
        totals = dict.fromkeys(COUNTERS, 0)
        history = {}
        for b in self._owned:
            block = self.state[self._params[self._blocks[b][0]]].get(_BLOCK_KEY)
            if block is not None:
                for key in COUNTERS:
                    totals[key] += int(block[key])
                history[b] = int(held(block))
        out.update({_COUNTER_NAMES[k]: v for k, v in totals.items()})
        out.update(history=history, blocks=len(self._blocks), owned_blocks=list(self._owned))
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint; its blocks must be the ones this optimizer was built with.

        A rank keeps only the blocks it owns; one it owns that the checkpoint lacks (saved by
        ranks that shared the blocks otherwise) starts afresh from an empty history. A
        checkpoint of the list layout (``"s"``, ``"y"``, ``"rho"`` lists per block, before the
        ring buffers) is converted on load.
        """
        # torch casts every state tensor to its parameter's dtype: integers too (bfloat16 holds
        # them exactly only to 256, float16 to 2048), and a block's state and heavy balls in
        # the block's dtype under a narrower parameter. What this optimizer keeps in another
        # dtype than its parameter's is taken as saved where the checkpoint has it so.
        saved = _saved_entries(state_dict)
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # a checkpoint from before these options
            for key, old in _ADDED_OPTIONS.items():
                group.setdefault(key, old)
        glob = self.state[self._params[0]].get(_GLOBAL_KEY)
        if glob is not None:
            steps = saved[0].get(_GLOBAL_KEY, {}).get("clipped_steps", glob["clipped_steps"])
            device = self._params[0].device
            glob["clipped_steps"] = torch.as_tensor(steps).to(device=device, dtype=torch.long)
            glob["direction_norm"] = torch.as_tensor(glob["direction_norm"])
        m = self.param_groups[0]["history_size"]
        for b, block in enumerate(self._blocks):
            dtype = self._block_dtype(b)
            for i in block:  # the heavy balls are in their directions' dtype, the block's
                ball = saved[i].get("momentum_buffer")
                here = self.state[self._params[i]]
                if "momentum_buffer" in here and isinstance(ball, Tensor) and ball.dtype == dtype:
                    here["momentum_buffer"] = ball.to(here["momentum_buffer"].device)
            holder = self.state[self._params[block[0]]]
            state = holder.get(_BLOCK_KEY)
            if state is not None and list(state["params"]) != block:
                raise CheckpointError(
                    f"mL-BFGS checkpoint has block {list(state['params'])} where this "
                    f"optimizer has block {block}: build it with the same blocks policy"
                )
            if b not in self._owned:  # another rank's block: keep none of its curvature state
                holder.pop(_BLOCK_KEY, None)
                for i in block:
                    self.state[self._params[i]].pop("param_avg", None)
                    self.state[self._params[i]].pop("grad_avg", None)
            elif state is not None and "pairs" not in state:  # the list layout
                like = self._flat(b, [p.detach() for p in self._params])
                holder[_BLOCK_KEY] = from_list_layout(state, m, like)
            elif state is not None:
                restore_dtypes(state, saved[block[0]].get(_BLOCK_KEY), dtype,
                               self._history_dtype(b))

    def _global(self) -> dict[str, Any]:
        # Global counters live under the first parameter (as torch.optim.LBFGS does) so that
        # state_dict() carries them with no extra keys.
        state = self.state[self._params[0]]
        if _GLOBAL_KEY not in state:
            p = self._params[0]
            state[_GLOBAL_KEY] = {
                "step": 0,
                "direction_norm": torch.tensor(math.nan, dtype=p.dtype, device=p.device),
                "clipped_steps": torch.zeros((), dtype=torch.long, device=p.device),
            }
        return state[_GLOBAL_KEY]

    def _block_state(self, b: int) -> dict[str, Any]:
        # A block's curvature state lives under its first parameter, so state_dict() maps it
        # to that parameter's index, and a rank holds it only for the blocks it owns.
        state = self.state[self._params[self._blocks[b][0]]]
        if _BLOCK_KEY not in state:
            p = self._params[self._blocks[b][0]]
            m = self.param_groups[0]["history_size"]
            state[_BLOCK_KEY] = new_history(self._sizes[b], m, self._block_dtype(b), p.device,
                                            store_dtype=self._history_dtype(b))
            state[_BLOCK_KEY]["params"] = list(self._blocks[b])
        return state[_BLOCK_KEY]

    def _block_dtype(self, b: int) -> torch.dtype:
        """The dtype of block ``b``'s math: its parameters' (promoted)."""
        return functools.reduce(
            torch.promote_types, (self._params[i].dtype for i in self._blocks[b])
        )

    def _history_dtype(self, b: int) -> torch.dtype:
        """The dtype block ``b``'s pairs are stored in (``history_dtype``, or the block's)."""
        return self.param_groups[0]["history_dtype"] or self._block_dtype(b)

    def _flat(self, b: int, tensors: list[Tensor], extra: int = 0) -> Tensor:
        """Block ``b`` of ``tensors`` as one new flat tensor, with ``extra`` slots after it."""
        parts = [tensors[i].reshape(-1) for i in self._blocks[b]]
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in parts))
        out = parts[0].new_empty(self._sizes[b] + extra, dtype=dtype)
        torch.cat(parts, out=out[: self._sizes[b]])
        return out

    # -- curvature pairs -----------------------------------------------------------------------

    def _flat_state(self, b: int, key: str) -> Tensor:
        return torch.cat([self.state[self._params[i]][key].reshape(-1) for i in self._blocks[b]])

    # -- averages and pairs ---------------------------------------------------------------------

    def _lead(self, b: int) -> Tensor:
        """The parameter that holds block ``b``'s curvature state."""
        return self._params[self._blocks[b][0]]

    def _seed_block(self, b: int, grads: list[Tensor], snapshot: bool = True) -> None:
        for i in self._blocks[b]:
            state = self.state[self._params[i]]
            state["param_avg"] = self._params[i].detach().clone()
            state["grad_avg"] = grads[i].clone()
        block = self._block_state(b)
        block.pop("param_snapshot", None)
        block.pop("grad_snapshot", None)
        if snapshot:  # the authors' variant takes its first snapshot at the first pair step
            block["param_snapshot"] = self._flat_state(b, "param_avg")
            block["grad_snapshot"] = self._flat_state(b, "grad_avg")

    def _average(
        self,
        blocks: list[int],
        grads: list[Tensor],
        beta_p: float,
        beta_g: float,
        authors: bool = False,
    ) -> None:
        index = [i for b in blocks for i in self._blocks[b]]
        if not index:
            return
        for key, beta, new in (
            ("param_avg", beta_p, self._params),
            ("grad_avg", beta_g, grads),
        ):
            avgs = [self.state[self._params[i]][key] for i in index]
            if authors:  # M <- beta M + x, un-normalised
                torch._foreach_mul_(avgs, beta)
                torch._foreach_add_(avgs, [new[i] for i in index])
            else:  # M <- beta M + (1 - beta) x as one pass (lerp; weight 1 gives x exactly)
                torch._foreach_lerp_(avgs, [new[i] for i in index], 1.0 - beta)

    def _same_batch_secants(
        self,
        owned: list[int],
        s_list: list[Tensor],
        grads: list[Tensor],
        closure: Callable[[], Any],
    ) -> list[Tensor]:
        """Each owned block's :math:`y = g(\theta; B) - g(\theta - s; B)` for its flat
        :math:`s` in ``s_list`` (``secant="same-batch"``): the closure runs once more with the
        blocks moved back by :math:`s`.

        Afterwards the parameters are copied back from a saved copy (not moved forward again,
        which would round), and each ``.grad`` is the step's gradient again, the same tensor
        with the same values (``grads`` stays valid whether the closure set ``.grad`` to
        ``None`` or zeroed it in place), also when the closure raises (the step counter and
        the averages have advanced by then, as ``torch.optim.LBFGS``'s state has when its
        closure raises mid-step: restore the optimizer's ``state_dict()`` to retry the step,
        as the runner's ``--on-nonfinite skip`` does).
        """
        params, shifts = [], []
        for b, s in zip(owned, s_list, strict=True):
            for i in self._blocks[b]:
                p, offset = self._params[i], self._where[i][1]
                params.append(p)
                shifts.append(s[offset : offset + p.numel()].view_as(p))
        kept = [p.detach().clone() for p in params]
        originals = [p.grad for p in self._params]
        saved = [g.clone() for g in grads]
        try:
            torch._foreach_sub_(params, shifts)
            with torch.enable_grad():
                closure()
            behind = [p.grad if p.grad is not None else torch.zeros_like(p)
                      for p in self._params]
            return [self._flat(b, saved) - self._flat(b, behind) for b in owned]
        finally:
            torch._foreach_copy_(params, kept)
            torch._foreach_copy_(grads, saved)
            for p, original in zip(self._params, originals, strict=True):
                p.grad = original

    def _form_pairs(
        self,
        owned: list[int],
        grads: list[Tensor],
        group: dict[str, Any],
        closure: Callable[[], Any] | None = None,
    ) -> None:
        """A pair for each of the blocks ``owned`` (their decisions taken together, see
        :func:`~sgdlab.optim._history.add_pairs`); with ``closure`` (``secant="same-batch"``),
        :math:`y` is the difference of two gradients of the step's batch instead of the
        averages' (:meth:`_same_batch_secants`)."""
        authors = group["variant"] == "authors"
        forming, s_list, y_list, grad_averages = [], [], [], []
        for b in owned:
            block = self._block_state(b)
            m_param = self._flat_state(b, "param_avg")
            m_grad = self._flat_state(b, "grad_avg")
            if authors:  # their gradient average restarts from g at every pair step
                for i in self._blocks[b]:
                    self.state[self._params[i]]["grad_avg"].copy_(grads[i])
                if "param_snapshot" not in block:  # their first pair step only takes snapshots
                    block["param_snapshot"], block["grad_snapshot"] = m_param, m_grad
                    continue
            forming.append(b)
            s_list.append(m_param - block["param_snapshot"])
            if closure is None:
                y_list.append(m_grad - block["grad_snapshot"])
            grad_averages.append(m_grad)
        if not forming:
            return
        if closure is not None:
            y_list = self._same_batch_secants(forming, s_list, grads, closure)
        bad = add_pairs([self._block_state(b) for b in forming], s_list, y_list,
                        group["damping"], group["pair_momentum"], blend_damped=authors)
        for b, bad_b, m_grad in zip(forming, bad.unbind(), grad_averages, strict=True):
            # After a NaN or Inf the averages start afresh from the current (finite) values.
            for i in self._blocks[b]:
                state = self.state[self._params[i]]
                state["param_avg"] = torch.where(bad_b, self._params[i], state["param_avg"])
                state["grad_avg"] = torch.where(bad_b, grads[i], state["grad_avg"])
            # The snapshots are the averages as they now stand: the same numbers as choosing
            # between the flat averages and the flat current values, in fewer operations. (The
            # authors' gradient average has restarted from g: their snapshot is the one before.)
            block = self._block_state(b)
            block["param_snapshot"] = self._flat_state(b, "param_avg")
            block["grad_snapshot"] = (torch.where(bad_b, self._flat(b, grads), m_grad) if authors
                                      else self._flat_state(b, "grad_avg"))

    # -- directions ------------------------------------------------------------------------------

    def _local_records(self, grads: list[Tensor], curvature: bool) -> dict[int, Tensor]:
        """For each owned block, its direction followed by the direction's norm (one tensor,
        a view into this rank's scratch buffers, :class:`~sgdlab.optim._records.Records`).

        The direction is :math:`H_b g_b` in compact form once pairs can exist, else
        :math:`g_b`. A non-finite compact solve from a finite gradient resets the history and
        the block follows its gradient; a non-finite direction (a non-finite gradient) is
        replaced by zeros. The norm is taken here, by the owner, with an ATen reduction
        (``_foreach_norm``, i.e. ``vector_norm``), whose order depends on the element count
        alone and not on where the tensor lies in memory (MKL's ``dot`` does not).
        """
        scratch = self._scratch()
        scratch.fill(grads)
        blocks = [self._block_state(b) for b in self._owned]
        scratch.set_norms(
            directions(blocks, scratch.dirs, curvature, scratch.buffers, scratch.compact)
        )
        return scratch.records

    def _scratch(self) -> Records:
        """This rank's records, made at the first step (and after a copy or a load)."""
        if self._records is None:
            self._records = Records(self._params, self._blocks, self._owned)
        return self._records
