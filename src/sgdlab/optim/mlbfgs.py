r"""mL-BFGS: momentum L-BFGS with a block-diagonal inverse Hessian, blocks shared out over ranks.

Niu, Fabian, Lee, Soltanolkotabi, Avestimehr, "mL-BFGS: A Momentum-based L-BFGS for Distributed
Large-Scale Neural Network Optimization", TMLR 2023.

The update, at step :math:`t = 1, 2, \dots` with the gradient :math:`g_t = \nabla f(\theta_t)`
of the caller's loss (weight decay *not* included):

1. **Smoothing** (every step, per block): exponential averages, seeded with the first value,

   .. math:: M^\theta_t = \beta_\theta M^\theta_{t-1} + (1-\beta_\theta)\,\theta_t, \qquad
             M^g_t = \beta_g M^g_{t-1} + (1-\beta_g)\,g_t .

   Both are the same linear filter when :math:`\beta_\theta = \beta_g`, so on a quadratic
   :math:`g = A\theta + b` they satisfy :math:`M^g = A M^\theta + b` exactly: the pairs below
   then obey the secant equation :math:`y = A s` whatever the noise averaging does. Unequal
   betas are allowed but warned about.

2. **Pairs** (at steps :math:`t = 1 + kT`, ``T = update_freq``): with :math:`\bar M` the averages
   kept from the previous pair step, :math:`s = M^\theta_t - \bar M^\theta`,
   :math:`y = M^g_t - \bar M^g`; the *pair momentum* :math:`\mu_p` smooths successive pairs,
   :math:`s \leftarrow \mu_p s_{prev} + (1-\mu_p) s` (the same for :math:`y`). **Damping** keeps
   the curvature ratio :math:`r = s^\top y / s^\top s` in the band
   :math:`[\sigma_{low}, \sigma_{high}]` (which contains 1) by :math:`y \leftarrow \phi y +
   (1-\phi) s`, which gives the ratio :math:`\phi r + 1 - \phi`; solving for the band's edge,

   .. math:: \phi = \frac{1-\sigma_{low}}{1-r} \ (r < \sigma_{low}), \quad
             \phi = \frac{\sigma_{high}-1}{r-1} \ (r > \sigma_{high}), \quad 1 \text{ otherwise},

   and then :math:`\phi \leftarrow \min(\phi, 1-\delta)`: at least a share :math:`\delta` of
   :math:`s` enters every :math:`y`, i.e. the model is of :math:`\phi\nabla^2 f + (1-\phi) I`
   (a Levenberg-Marquardt shift). A pair joins the block's FIFO history of ``history_size``
   pairs with :math:`\rho = 1/s^\top y`, and :math:`H_0 = \gamma I`,
   :math:`\gamma = s^\top y / y^\top y` of the newest pair. A pair with
   :math:`s^\top y \le 0` or :math:`s = 0` after damping is *rejected* (the history is kept).

3. **Direction** (every step): per block, :math:`d_b = H_b g_b` by the two-loop recursion
   (Nocedal & Wright, Alg. 7.4) once the block has pairs (from step :math:`T+1`), else
   :math:`d_b = g_b`: before step :math:`T+1` the method is momentum SGD. The whole direction
   is clipped to norm ``max_norm``, :math:`\hat d = d \min(1, \text{max\_norm}/\lVert d\rVert)`,
   the warm-up's gradients included.

4. **Heavy ball and weight decay**, per parameter group (``lr``, ``momentum``,
   ``weight_decay``):

   .. math:: b_t = m\, b_{t-1} + \hat d_t, \qquad
             \theta_{t+1} = (1 - \eta\lambda)\,\theta_t - \eta\, b_t .

   Since every :math:`\hat d` entering the heavy ball was clipped, :math:`\lVert b_t\rVert \le
   \text{max\_norm}/(1-m)`: no step is longer than :math:`\eta\,\text{max\_norm}/(1-m)` (plus
   the decay), at any learning rate, whatever the curvature model says. (Clipping only the
   preconditioned directions is not enough: the buffer filled by the warm-up's raw gradients
   then coasts on against a restoring force cut by the clip, and on torch's own quadratic at
   ``lr=0.01`` the loss ended above its start where momentum SGD converges.)

   **Where weight decay enters**: only here, on the parameters (decoupled, as in SGDW/AdamW).
   It is not in :math:`g`, so not in :math:`y`, not preconditioned, not clipped and not in the
   heavy-ball buffer; the curvature pairs see the loss alone.

**Safety.** A pair with a NaN or Inf resets its block's history and re-seeds the block's
averages from the current values; a non-finite direction from a finite gradient resets the
history and the block follows its gradient this step; a block whose gradient is itself not
finite gets a zero direction (its history is kept; the heavy ball coasts). Each event is
counted in :meth:`MLBFGS.diagnostics`, and nothing non-finite reaches the parameters.

**Sharding.** With an ``exchange`` (see :class:`DirectionExchange`), blocks are given owners by
:func:`assign_blocks`; rank ``r`` keeps the averages, snapshots and history *only* of its own
blocks and runs their two-loop recursions, and the exchange fills in the other blocks'
directions. Every rank keeps the heavy-ball buffer of every parameter, since each applies the
full step. A block's norm :math:`\lVert d_b\rVert` travels with its direction (one extra
element), taken by its owner: every rank then sums the same numbers in the same order
(``math.fsum``) for the clip, and no rank reduces another's data. So the replicas stay
bit-identical by construction, whatever the CPU: MKL's ``dot`` rounds differently for a
tensor at another memory alignment (as the slices of an all-gather buffer are), and a norm
each rank took itself once let replicas drift apart in the last bits under
:class:`~sgdlab.distributed.SyncSGD` on AMD EPYC. (What every rank still computes on its own
copy is element-wise, which rounds the same on every rank of one instruction set; hosts with
different vector units, AVX2 beside AVX-512, can differ there, as any data-parallel
optimizer can.) Memory per rank: :math:`n` (heavy ball) :math:`+ (4 + 2m)\,n_r`
(:math:`+2n_r` with pair momentum) for :math:`n_r` owned elements, instead of
:math:`(5 + 2m)\,n` when replicated.
The step equals the single-rank step exactly.

**Checkpoints.** All of it lives in ``self.state``: per-parameter buffers under each parameter,
a block's history under the block's first parameter (key ``"mlbfgs_block"``), the step counter
under the first parameter (key ``"mlbfgs_global"``); ``state_dict()`` mid-run resumes bit for
bit. Under sharding each rank checkpoints its own blocks. Parameters with no gradient count as
a zero gradient inside their block's curvature model, as in ``torch.optim.LBFGS``, but the
step leaves them alone (no move, no decay, their heavy ball kept), as torch's optimizers do.
``copy.deepcopy`` and ``pickle`` give an optimizer that steps exactly like the original (a
sharded one refuses: its exchange is a live collective). ``lr`` may be a one-element tensor;
it is read as a number at each step.

**Unlike the authors' public code**, every parameter is in some block (none skipped), the
history is optimizer state (so checkpoints keep it), blocks are sharded rather than replicated
on every rank, and weight decay is decoupled rather than added to the gradient.

Example:
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(64, 5)
    >>> w_true = torch.randn(5)
    >>> model = torch.nn.Linear(5, 1)
    >>> opt = MLBFGS(model.parameters())
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = ((model(x).squeeze(1) - x @ w_true) ** 2).mean()
    ...     loss.backward()
    ...     return loss
    >>> first = closure().item()
    >>> for _ in range(100):
    ...     loss = opt.step(closure)
    >>> loss.item() < 1e-2 * first
    True
    >>> opt.diagnostics()["pairs_accepted"] > 0
    True
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from sgdlab.errors import CheckpointError
from sgdlab.optim._blocks import (
    BlockPolicy,
    assign_blocks,
    build_blocks,
    check_policy,
    module_blocks,
)
from sgdlab.optim._curvature import (
    COUNTERS,
    add_pair,
    check_damping,
    new_block_state,
    reset_history,
    two_loop,
)

__all__ = [
    "MLBFGS",
    "DirectionExchange",
    "MLBFGSConfig",
    "assign_blocks",
    "module_blocks",
]

_BLOCK_KEY = "mlbfgs_block"
_GLOBAL_KEY = "mlbfgs_global"
_COUNTER_NAMES = {
    "accepted": "pairs_accepted",
    "damped": "pairs_damped",
    "rejected": "pairs_rejected",
    "nonfinite_resets": "nonfinite_resets",
    "nonfinite_grads": "nonfinite_grads",
}
# Knobs of the curvature model: shared by all blocks, so they must agree across param groups.
_CURVATURE_KEYS = (
    "history_size",
    "update_freq",
    "beta_param",
    "beta_grad",
    "pair_momentum",
    "damping",
    "max_norm",
)


@runtime_checkable
class DirectionExchange(Protocol):
    """What the optimizer needs from the communication layer to shard the two-loop recursion.

    ``gather_directions`` is a collective: every rank calls it at the same step with the
    records of the blocks it owns (``local``: block index -> flat tensor; :class:`MLBFGS`
    sends the block's direction followed by its norm) and the owner of every block
    (``owners[b]``); it returns the records of *all* blocks, each bit for bit the one its
    owner sent (views into a receive buffer are fine).
    """

    @property
    def rank(self) -> int:
        """This process's rank, in ``range(world_size)``."""
        ...

    @property
    def world_size(self) -> int:
        """The number of ranks that share the blocks."""
        ...

    def gather_directions(self, local: dict[int, Tensor], owners: list[int]) -> dict[int, Tensor]:
        """All blocks' flat directions, from each owner's ``local`` contribution."""
        ...


@dataclass(frozen=True)
class MLBFGSConfig:
    """Hyperparameters of :class:`MLBFGS` and their defaults.

    The defaults were chosen on small mini-batch problems (logistic regression, a tanh MLP; see
    ``tests/optim/test_mlbfgs.py``) to train as well as or better than SGD with ``lr=0.1,
    momentum=0.9``, which is also the warm-up. The damping band is in units of the loss's
    curvature along ``s`` (per unit of parameter change): ``(0.5, 2.0)`` keeps the block
    preconditioner's curvature estimates within a factor 2 of 1, which suits mean losses
    such as cross-entropy at this ``lr``; widen it (e.g. ``(0.01, 1e4, 0.0)``) to let the
    curvature speak more freely, and mind ``max_norm``, which caps each step at
    ``lr * max_norm`` before the heavy ball.
    """

    lr: float = 0.1
    momentum: float = 0.9
    history_size: int = 10
    update_freq: int = 5
    beta_param: float = 0.95
    beta_grad: float = 0.95
    pair_momentum: float = 0.0
    damping: tuple[float, float, float] = (0.5, 2.0, 0.0)
    weight_decay: float = 0.0
    max_norm: float | None = 0.3
    blocks: str = "layer"

    def build(self, params: Iterable[Any], exchange: DirectionExchange | None = None) -> MLBFGS:
        """The optimizer over ``params`` with these settings."""
        return MLBFGS(params, exchange=exchange, **self.__dict__)


_D = MLBFGSConfig()


class MLBFGS(torch.optim.Optimizer):
    """mL-BFGS (see the module docstring for the update and the state it keeps).

    Args:
        params: parameters or parameter groups; groups may differ in ``lr``, ``momentum`` and
            ``weight_decay`` only (the curvature model is shared).
        lr: step size :math:`\\eta` (a number, or a one-element tensor).
        momentum: heavy-ball coefficient :math:`m` in [0, 1).
        history_size: pairs kept per block (``m`` of L-BFGS), at least 1.
        update_freq: a new pair every ``update_freq`` steps (``T``), at least 1.
        beta_param, beta_grad: averaging of parameters and gradients, in [0, 1).
        pair_momentum: averaging of successive pairs, in [0, 1).
        damping: ``(sigma_low, sigma_high, delta)`` with 0 <= sigma_low < 1 < sigma_high
            (may be ``inf``) and 0 <= delta < 1.
        weight_decay: decoupled weight decay :math:`\\lambda` >= 0.
        max_norm: clip every direction (the warm-up's gradients too) to this norm before the
            heavy ball, so no step exceeds ``lr * max_norm / (1 - momentum)``; ``None`` for
            no clipping.
        blocks: ``"layer"``, ``"size:<numel>"`` or a callable (see :mod:`sgdlab.optim._blocks`).
        exchange: the rank's :class:`DirectionExchange`; ``None`` for a single process.

    Precondition: call ``loss.backward()`` (or pass a closure) before :meth:`step`.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = _D.lr,
        momentum: float = _D.momentum,
        history_size: int = _D.history_size,
        update_freq: int = _D.update_freq,
        beta_param: float = _D.beta_param,
        beta_grad: float = _D.beta_grad,
        pair_momentum: float = _D.pair_momentum,
        damping: tuple[float, float, float] = _D.damping,
        weight_decay: float = _D.weight_decay,
        max_norm: float | None = _D.max_norm,
        blocks: BlockPolicy = _D.blocks,
        exchange: DirectionExchange | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError(f"Invalid lr: a tensor lr must have one element, got {lr.numel()}")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid lr: {lr}")
        for name, value in (
            ("momentum", momentum),
            ("beta_param", beta_param),
            ("beta_grad", beta_grad),
            ("pair_momentum", pair_momentum),
        ):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"Invalid {name}: {value}")
        for name, count in (("history_size", history_size), ("update_freq", update_freq)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"Invalid {name}: {count}")
        damping = check_damping(damping)
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        if max_norm is not None and not max_norm > 0.0:
            raise ValueError(f"Invalid max_norm: {max_norm}")
        check_policy(blocks)
        rank, world_size = 0, 1
        if exchange is not None:
            rank, world_size = exchange.rank, exchange.world_size
            if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
                raise ValueError(f"Invalid exchange: rank {rank} of world_size {world_size}")
        if beta_param != beta_grad:
            warnings.warn(
                f"beta_param={beta_param} differs from beta_grad={beta_grad}: the averaged "
                "pairs then no longer satisfy the secant equation on a quadratic",
                stacklevel=2,
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            history_size=history_size,
            update_freq=update_freq,
            beta_param=beta_param,
            beta_grad=beta_grad,
            pair_momentum=pair_momentum,
            damping=damping,
            weight_decay=weight_decay,
            max_norm=max_norm,
        )
        super().__init__(params, defaults)
        for key in _CURVATURE_KEYS:
            values = {repr(group[key]) for group in self.param_groups}
            if len(values) > 1:
                raise ValueError(f"Invalid {key}: param groups must share it, got {values}")
        params_in_order = [p for g in self.param_groups for p in g["params"]]
        if any(p.is_complex() for p in params_in_order):
            raise ValueError("Invalid params: MLBFGS supports real parameters only")
        self._exchange = exchange
        self._blocks = build_blocks(params_in_order, blocks)
        self._index()
        self._owners = assign_blocks(self._sizes, world_size)
        self._owned = [b for b, owner in enumerate(self._owners) if owner == rank]

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
        out: dict[str, Any] = dict(self._global())
        totals = dict.fromkeys(COUNTERS, 0)
        history = {}
        for b in self._owned:
            block = self.state[self._params[self._blocks[b][0]]].get(_BLOCK_KEY)
            if block is not None:
                for key in COUNTERS:
                    totals[key] += block[key]
                history[b] = len(block["s"])
        out.update({_COUNTER_NAMES[k]: v for k, v in totals.items()})
        out.update(history=history, blocks=len(self._blocks), owned_blocks=list(self._owned))
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint; its blocks must be the ones this optimizer was built with.

        A rank keeps only the blocks it owns; one it owns that the checkpoint lacks (saved by
        ranks that shared the blocks otherwise) starts afresh from an empty history.
        """
        super().load_state_dict(state_dict)
        for b, block in enumerate(self._blocks):
            state = self.state[self._params[block[0]]].get(_BLOCK_KEY)
            if state is not None and list(state["params"]) != block:
                raise CheckpointError(
                    f"mL-BFGS checkpoint has block {list(state['params'])} where this "
                    f"optimizer has block {block}: build it with the same blocks policy"
                )
            if b not in self._owned:  # another rank's block: keep none of its curvature state
                self.state[self._params[block[0]]].pop(_BLOCK_KEY, None)
                for i in block:
                    self.state[self._params[i]].pop("param_avg", None)
                    self.state[self._params[i]].pop("grad_avg", None)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One mL-BFGS step; returns the closure's loss (``None`` without a closure)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group0 = self.param_groups[0]
        glob = self._global()
        glob["step"] += 1
        t, period = glob["step"], group0["update_freq"]
        grads = [_grad_of(p) for p in self._params]

        for b in self._owned:
            if "param_snapshot" not in self._block_state(b):
                # The first step, or a checkpoint from ranks that shared blocks otherwise.
                self._seed_block(b, grads)
            else:
                self._average(b, grads, group0["beta_param"], group0["beta_grad"])
                if (t - 1) % period == 0:
                    self._form_pair(b, grads, group0)

        curvature = t > period  # the first pair was formed at step 1 + T
        local = self._local_records(grads, curvature)
        if self._exchange is None:
            records = local
        else:
            records = self._exchange.gather_directions(local, list(self._owners))
            missing = set(range(len(self._blocks))) - set(records)
            if missing:
                raise RuntimeError(f"exchange returned no direction for blocks {missing}")
        # Each block's norm is its owner's, carried in the record's last slot: every rank sums
        # the same numbers in the same order (exactly, with fsum), so the clip is the same on
        # every rank whatever its CPU, and no BLAS reduction runs on another rank's data.
        norms = torch.stack([records[b][-1] for b in range(len(self._blocks))]).tolist()
        norm = math.sqrt(math.fsum(v * v for v in norms))
        glob["direction_norm"] = norm
        scale = 1.0
        max_norm = group0["max_norm"]
        if max_norm is not None and norm > max_norm:
            scale = max_norm / norm
            glob["clipped_steps"] += 1

        index = 0
        for group in self.param_groups:
            # float(): a one-element tensor lr is read as a number, once per group and step.
            lr, mom, wd = float(group["lr"]), group["momentum"], group["weight_decay"]
            for p in group["params"]:
                b, offset = self._where[index]
                index += 1
                if p.grad is None:  # left alone, as torch's optimizers do: no step, no decay
                    continue
                d = records[b][offset : offset + p.numel()].view_as(p)
                if scale != 1.0:
                    d = d * scale
                if mom != 0.0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d.clone()
                    else:
                        state["momentum_buffer"].mul_(mom).add_(d)
                    d = state["momentum_buffer"]
                if wd != 0.0:
                    p.mul_(1.0 - lr * wd)
                p.add_(d, alpha=-lr)
        return loss

    # -- state ---------------------------------------------------------------------------------

    def _global(self) -> dict[str, Any]:
        # Global counters live under the first parameter (as torch.optim.LBFGS does) so that
        # state_dict() carries them with no extra keys.
        state = self.state[self._params[0]]
        if _GLOBAL_KEY not in state:
            state[_GLOBAL_KEY] = {"step": 0, "direction_norm": math.nan, "clipped_steps": 0}
        return state[_GLOBAL_KEY]

    def _block_state(self, b: int) -> dict[str, Any]:
        # A block's curvature state lives under its first parameter, so state_dict() maps it
        # to that parameter's index, and a rank holds it only for the blocks it owns.
        state = self.state[self._params[self._blocks[b][0]]]
        if _BLOCK_KEY not in state:
            state[_BLOCK_KEY] = new_block_state(self._blocks[b])
        return state[_BLOCK_KEY]

    def _flat(self, b: int, tensors: list[Tensor], extra: int = 0) -> Tensor:
        """Block ``b`` of ``tensors`` as one new flat tensor, with ``extra`` slots after it."""
        parts = [tensors[i].reshape(-1) for i in self._blocks[b]]
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in parts))
        out = parts[0].new_empty(self._sizes[b] + extra, dtype=dtype)
        torch.cat(parts, out=out[: self._sizes[b]])
        return out

    # -- curvature pairs -----------------------------------------------------------------------

    def _seed_block(self, b: int, grads: list[Tensor]) -> None:
        for i in self._blocks[b]:
            state = self.state[self._params[i]]
            state["param_avg"] = self._params[i].detach().clone()
            state["grad_avg"] = grads[i].clone()
        block = self._block_state(b)
        block["param_snapshot"] = self._flat_state(b, "param_avg")
        block["grad_snapshot"] = self._flat_state(b, "grad_avg")

    def _flat_state(self, b: int, key: str) -> Tensor:
        return torch.cat([self.state[self._params[i]][key].reshape(-1) for i in self._blocks[b]])

    def _average(self, b: int, grads: list[Tensor], beta_p: float, beta_g: float) -> None:
        for i in self._blocks[b]:
            state = self.state[self._params[i]]
            state["param_avg"].mul_(beta_p).add_(self._params[i], alpha=1.0 - beta_p)
            state["grad_avg"].mul_(beta_g).add_(grads[i], alpha=1.0 - beta_g)

    def _form_pair(self, b: int, grads: list[Tensor], group: dict[str, Any]) -> None:
        block = self._block_state(b)
        m_param = self._flat_state(b, "param_avg")
        m_grad = self._flat_state(b, "grad_avg")
        s = m_param - block["param_snapshot"]
        y = m_grad - block["grad_snapshot"]
        block["param_snapshot"], block["grad_snapshot"] = m_param, m_grad
        outcome = add_pair(
            block, s, y, group["damping"], group["history_size"], group["pair_momentum"]
        )
        if outcome == "nonfinite":
            self._seed_block(b, grads)  # start the averages afresh from finite values

    # -- directions ----------------------------------------------------------------------------

    def _local_records(self, grads: list[Tensor], curvature: bool) -> dict[int, Tensor]:
        """For each owned block, its direction followed by the direction's norm (one tensor).

        The direction is :math:`H_b g_b` once the block has pairs, else :math:`g_b`. A
        non-finite direction from a finite gradient resets the history and falls back to the
        gradient; a non-finite gradient gives a zero direction. The norm is taken here, by the
        owner, with an ATen reduction (``vector_norm``), whose order depends on the element
        count alone and not on where the tensor lies in memory (MKL's ``dot`` does not).
        """
        records: dict[int, Tensor] = {}
        for b in self._owned:
            record = self._flat(b, grads, extra=1)  # the norm goes in the last slot
            direction = record[:-1]
            block = self._block_state(b)
            if curvature and block["s"]:
                s, y, rho, gamma = block["s"], block["y"], block["rho"], block["gamma"]
                two_loop(direction, s, y, rho, gamma, inplace=True)
            records[b] = record
        if not records:
            return records
        norms = torch.stack([torch.linalg.vector_norm(r[:-1]) for r in records.values()])
        finite = torch.isfinite(norms).tolist()
        for k, (b, record) in enumerate(records.items()):
            if finite[k]:
                record[-1] = norms[k]
                continue
            direction = record[:-1]
            block = self._block_state(b)
            flat = self._flat(b, grads)
            norm = torch.linalg.vector_norm(flat)
            if bool(torch.isfinite(norm)) and block["s"] and curvature:
                reset_history(block)  # the history is at fault: forget it, follow the gradient
                direction.copy_(flat)
                record[-1] = norm
            else:  # the gradient is at fault, not the history: skip the block this step
                direction.zero_()
                record[-1] = 0.0
                block["nonfinite_grads"] += 1
        return records


def _grad_of(p: Tensor) -> Tensor:
    if p.grad is None:
        return torch.zeros_like(p)
    if p.grad.is_sparse:
        raise RuntimeError("MLBFGS does not support sparse gradients")
    return p.grad
