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
   (a Levenberg-Marquardt shift). A pair joins the block's history of ``history_size``
   pairs (a ring buffer: the oldest is overwritten), and :math:`H_0 = \gamma I`,
   :math:`\gamma = s^\top y / y^\top y` of the newest pair. A pair with
   :math:`s^\top y \le 0` or :math:`s = 0` after damping is *rejected* (the history is kept).

   **Same-batch secants** (``secant="same-batch"``, an option beyond the paper): the
   averaged :math:`y` above differs gradients of *different* batches, so it carries the
   gradient noise between them beside the change of the gradient along :math:`s`. With this
   option :math:`y = g(\theta_t; B_t) - g(\theta_t - s; B_t)`, both on the step's batch
   :math:`B_t`: the closure is evaluated once more at each pair step, at
   :math:`\theta_t - s`, so :math:`y` is the batch loss's exact secant along :math:`s`
   (:math:`y = A_B s` on a quadratic; :math:`s^\top y \ge 0` on a convex loss over the whole
   vector, while one block's share :math:`s_b^\top y_b = s_b^\top (A_{bb} s_b + A_{bc} s_c)`
   carries its coupling to the blocks that moved with it and can be negative), as in online
   L-BFGS (Schraudolph, Yu and Günter, AISTATS 2007) and in the stochastic quasi-Newton method
   of Byrd, Hansen, Nocedal and Singer (SIAM J. Optim. 2016, with a Hessian-vector product
   where we take a gradient difference). It costs one more forward and backward pass every
   ``update_freq`` steps, needs a closure that evaluates the same batch each time it is
   called (dropout masks redrawn per call break the secant), and runs on a single process (a
   sharded rank holds only its own blocks' :math:`s`). Such a pair carries the loss's own
   curvature scale, which a band around 1 (the default ``damping``) rescales; widen the band
   with this option. (On logistic regression over Fashion-MNIST at batch 2048 its ratios
   :math:`s^\top y / s^\top s` were about as small as the averaged pairs', medians
   0.010-0.025 against 0.025-0.037, and it reached no target sooner; see
   ``benchmarks/results/mlbfgs_horizon-logreg-fmnist-secant.md``.)

3. **Direction** (every step): per block, :math:`d_b = H_b g_b`, the L-BFGS product of the
   two-loop recursion (Nocedal & Wright, Alg. 7.4), computed in the compact form of Byrd,
   Nocedal and Schnabel (:mod:`sgdlab.optim._history`: two passes over the history, no
   per-pair loop) once the block has pairs (from step :math:`T+1`), else
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
averages from the current values; a non-finite compact solve from a finite gradient resets the
history and the block follows its gradient this step; a block whose direction is still not
finite (its gradient is not) gets a zero direction (its history is kept; the heavy ball
coasts). Each event is counted in :meth:`MLBFGS.diagnostics`, and nothing non-finite reaches
the parameters. Every such decision is a device tensor (``torch.where``): the step reads no
value back from the device (no ``.item()``, ``float()`` or ``.tolist()``).

**Sharding.** With an ``exchange`` (see :class:`DirectionExchange`), blocks are given owners by
:func:`assign_blocks`; rank ``r`` keeps the averages, snapshots and history *only* of its own
blocks and computes their directions, and the exchange fills in the other blocks'. Every rank
keeps the heavy-ball buffer of every parameter, since each applies the full step. A block's
norm :math:`\lVert d_b\rVert` travels with its direction (one extra element), taken by its
owner; every rank copies the norms in block order into a fresh tensor (``torch.stack``: same
numbers, same order, same allocator alignment on every rank) and reduces it with ATen's
``vector_norm``, whose summation order depends on the element count alone. So the clip is
the same on every rank by construction, and no rank reduces another's data: MKL's ``dot``
rounds differently for a tensor at another memory alignment (as the slices of an all-gather
buffer are), and a norm each rank took itself once let replicas drift apart in the last bits
under :class:`~sgdlab.distributed.SyncSGD` on AMD EPYC. (What every rank still computes on its
own copy is element-wise, which rounds the same on every rank of one instruction set; hosts
with different vector units, AVX2 beside AVX-512, can differ there, as any data-parallel
optimizer can.) Memory per rank: :math:`n` (heavy ball) :math:`+ (5 + 2m)\,n_r`
(:math:`+2n_r` with pair momentum) for :math:`n_r` owned elements, one :math:`n_r` of it the
step's directions (:mod:`sgdlab.optim._records`), instead of :math:`(6 + 2m)\,n` when
replicated. The step equals the single-rank step exactly.

**Checkpoints.** All of it lives in ``self.state``: per-parameter buffers under each parameter,
a block's history under the block's first parameter (key ``"mlbfgs_block"``), the step counter
under the first parameter (key ``"mlbfgs_global"``); ``state_dict()`` mid-run resumes bit for
bit, and a checkpoint of the list layout (before the ring buffers) is converted on load.
Under sharding each rank checkpoints its own blocks. Parameters with no gradient count as
a zero gradient inside their block's curvature model, as in ``torch.optim.LBFGS``, but the
step leaves them alone (no move, no decay, their heavy ball kept), as torch's optimizers do.
``copy.deepcopy`` and ``pickle`` give an optimizer that steps exactly like the original (a
sharded one refuses: its exchange is a live collective). ``lr`` may be a one-element tensor;
it is read as a number at each step.

**Unlike the authors' public code**, every parameter is in some block (none skipped), the
history is optimizer state (so checkpoints keep it), blocks are sharded rather than replicated
on every rank, and weight decay is decoupled rather than added to the gradient (theirs also
scales the gradient entering the averages by :math:`1+\lambda`). Their rules for averages,
pairs and the direction's length are on offer as ``variant="authors"``
(:meth:`MLBFGSConfig.authors`; see :class:`MLBFGS` for what differs and why ours is the
default); a test checks it against a transcription of their update.

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

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sgdlab.optim._blocks import (
    BlockPolicy,
    DirectionExchange,
    assign_blocks,
    build_blocks,
    check_policy,
    module_blocks,
)
from sgdlab.optim._curvature import check_damping
from sgdlab.optim._mlbfgs_state import BlockStateOptimizer

__all__ = [
    "MLBFGS",
    "DirectionExchange",
    "MLBFGSConfig",
    "assign_blocks",
    "module_blocks",
]

_CURVATURE_KEYS = (
    "history_size",
    "update_freq",
    "beta_param",
    "beta_grad",
    "pair_momentum",
    "damping",
    "max_norm",
    "variant",
    "history_dtype",
    "secant",
)
SECANTS = ("averaged", "same-batch")
# What ``history_dtype`` may name: a narrower history halves the bytes a step reads.
HISTORY_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass(frozen=True)
class MLBFGSConfig:
    """Hyperparameters of :class:`MLBFGS` and their defaults.

    The defaults were chosen on small mini-batch problems (logistic regression, a tanh MLP; see
    ``tests/optim/test_mlbfgs_defaults.py``) to train as well as or better than SGD with ``lr=0.1,
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
    variant: str = "ours"
    history_dtype: torch.dtype | str | None = None
    secant: str = "averaged"

    @classmethod
    def authors(cls, lr: float = 0.1, weight_decay: float = 0.0) -> MLBFGSConfig:
        """The authors' public code (``yuehniu/mL-BFGS``, ``opt/slimblock.py``) as a preset:
        their rules (``variant="authors"``, see :class:`MLBFGS`) and defaults (averaging 0.9
        and 0.99, pair momentum 0.8, band (0.01, 1.5) with 0.2, T = 100, 100 pairs, one
        block)."""
        return cls(
            lr=lr,
            weight_decay=weight_decay,
            history_size=100,
            update_freq=100,
            beta_param=0.9,
            beta_grad=0.99,
            pair_momentum=0.8,
            damping=(0.01, 1.5, 0.2),
            max_norm=None,
            blocks=f"size:{2**62}",
            variant="authors",
        )

    def build(self, params: Iterable[Any], exchange: DirectionExchange | None = None) -> MLBFGS:
        """The optimizer over ``params`` with these settings."""
        return MLBFGS(params, exchange=exchange, **self.__dict__)


_D = MLBFGSConfig()


class MLBFGS(BlockStateOptimizer):
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
        variant: ``"ours"`` (the module docstring) or ``"authors"``, the rules of the authors'
            code: un-normalised averages :math:`M \\leftarrow \\beta M + x`, the gradient
            average restarted from :math:`g` at each pair, pairs at steps :math:`kT` with the
            first at :math:`2T`, pair momentum blended with the previous *damped* pair, and
            from step :math:`2T` on a unit-norm direction (the global norm) instead of the
            clip (``max_norm`` is not used). Use it with :meth:`MLBFGSConfig.authors`. We keep
            our rules by default: normalised averages keep :math:`y = A s` exact on a
            quadratic (theirs restart only :math:`g`'s average, so their pairs mix
            unequal filters), the clip keeps the step bounded without blowing small
            directions up to unit length, and the first pair comes a period sooner. Weight
            decay stays decoupled in both (theirs adds it to the gradient).
        secant: how a pair's :math:`y` is formed: ``"averaged"`` (the paper's, the
            difference of the gradient averages) or ``"same-batch"`` (two gradients of the
            step's batch; a closure is then required, see the module docstring).
        history_dtype: the dtype the pairs are stored in (``torch.bfloat16``, ``float32``,
            ``float64`` or their names); ``None``: the parameters'. It may not be wider than
            any parameter's. The Gram matrix, :math:`\\gamma` and the solves stay in the
            parameters' dtype; the two products with the history take its dtype's operands
            and accumulate in float32 (see :mod:`sgdlab.optim._history`). A bfloat16 history
            moves half the history's bytes and rounds the direction's curvature part to
            about 3 significant digits; it saves time only where bfloat16 products are
            native (a GPU; on an AVX2 CPU the step costs about what a float32 one does).

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
        variant: str = _D.variant,
        history_dtype: torch.dtype | str | None = _D.history_dtype,
        secant: str = _D.secant,
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
        if variant not in ("ours", "authors"):
            raise ValueError(f"Invalid variant: {variant!r}")
        history_dtype = _history_dtype(history_dtype)
        if secant not in SECANTS:
            raise ValueError(f"Invalid secant: {secant!r} (one of {', '.join(SECANTS)})")
        if secant == "same-batch" and variant == "authors":
            raise ValueError("Invalid secant: 'same-batch' is an option of variant='ours'")
        if secant == "same-batch" and exchange is not None:
            raise ValueError(
                "Invalid secant: 'same-batch' moves every block, and a sharded rank holds the "
                "averages of its own blocks only; use secant='averaged' with an exchange"
            )
        rank, world_size = 0, 1
        if exchange is not None:
            rank, world_size = exchange.rank, exchange.world_size
            if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
                raise ValueError(f"Invalid exchange: rank {rank} of world_size {world_size}")
        if beta_param != beta_grad and variant == "ours":
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
            variant=variant,
            history_dtype=history_dtype,
            secant=secant,
        )
        super().__init__(params, defaults)
        for key in _CURVATURE_KEYS:
            values = {repr(group[key]) for group in self.param_groups}
            if len(values) > 1:
                raise ValueError(f"Invalid {key}: param groups must share it, got {values}")
        params_in_order = [p for g in self.param_groups for p in g["params"]]
        if any(p.is_complex() for p in params_in_order):
            raise ValueError("Invalid params: MLBFGS supports real parameters only")
        for p in params_in_order:
            # Wider than a parameter, torch's load_state_dict would round it to the
            # parameter's dtype (it casts all floating-point state): no exact resume.
            if history_dtype is not None and torch.promote_types(history_dtype, p.dtype) != p.dtype:
                raise ValueError(
                    f"Invalid history_dtype: {history_dtype} is wider than a {p.dtype} parameter"
                )
        self._exchange = exchange
        self._blocks = build_blocks(params_in_order, blocks)
        self._index()
        self._owners = assign_blocks(self._sizes, world_size)
        self._owned = [b for b, owner in enumerate(self._owners) if owner == rank]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One mL-BFGS step; returns the closure's loss (``None`` without a closure).

        No value is read back from the device: every decision is a tensor (see
        :mod:`sgdlab.optim._history`).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group0 = self.param_groups[0]
        glob = self._global()
        glob["step"] += 1
        t, period = glob["step"], group0["update_freq"]
        grads = [_grad_of(p) for p in self._params]
        same_batch = group0["secant"] == "same-batch"
        if same_batch and closure is None:
            raise RuntimeError(
                "MLBFGS(secant='same-batch') needs a closure: it evaluates the gradient of "
                "the step's batch a second time at its pair steps"
            )

        authors = group0["variant"] == "authors"
        seeded = [b for b in self._owned if "param_avg" in self.state[self._lead(b)]]
        for b in self._owned:
            if b not in seeded:  # the first step, or a checkpoint from other owners
                self._seed_block(b, grads, snapshot=not authors)
        self._average(seeded, grads, group0["beta_param"], group0["beta_grad"], authors)
        if (t if authors else t - 1) % period == 0:
            self._form_pairs(seeded, grads, group0, closure if same_batch else None)

        # The first pair was formed at step 1 + T (the authors': 2T).
        curvature = t >= 2 * period if authors else t > period
        local = self._local_records(grads, curvature)
        if self._exchange is None:
            records = local
        else:
            records = self._exchange.gather_directions(local, list(self._owners))
            missing = set(range(len(self._blocks))) - set(records)
            if missing:
                raise RuntimeError(f"exchange returned no direction for blocks {missing}")
        # Each block's norm is its owner's, carried in the record's last slot. torch.stack
        # copies them, in block order, into a fresh tensor (the allocator's alignment, the
        # same on every rank), and ATen's norm of it rounds by the element count alone: every
        # rank gets the same bits, and no BLAS reduction runs on another rank's data.
        scratch = self._scratch()
        if records is local:
            slots = scratch.norm_slots  # every block is owned: the slots in block order
        else:
            slots = [records[b][-1] for b in range(len(self._blocks))]
        norm = torch.linalg.vector_norm(torch.stack(slots))
        # Kept in the first parameter's dtype, to which torch's load_state_dict casts it.
        glob["direction_norm"] = norm.to(self._params[0].dtype)
        max_norm = group0["max_norm"]
        scale = None
        if authors and curvature:  # the authors' unit-norm direction (a zero one stays zero)
            scale = torch.where(norm > 0.0, 1.0 / norm, 1.0)
        elif max_norm is not None and not authors:
            over = norm > max_norm
            glob["clipped_steps"] = glob["clipped_steps"] + over
            scale = torch.where(over, max_norm / norm, 1.0)

        index = 0
        for group in self.param_groups:
            params, dirs = [], []
            for p in group["params"]:
                if p.grad is not None:  # else left alone, as torch's optimizers do
                    params.append(p)
                    if records is local:
                        dirs.append(scratch.views[index])
                    else:
                        b, offset = self._where[index]
                        dirs.append(records[b][offset : offset + p.numel()].view_as(p))
                index += 1
            if params:
                self._apply(group, params, dirs, scale)
        return loss

    def _apply(
        self, group: dict[str, Any], params: list[Tensor], dirs: list[Tensor], scale: Any
    ) -> None:
        """Heavy ball and decoupled weight decay for one group (element-wise, foreach)."""
        # float(): a one-element tensor lr is read as a number, once per group and step.
        lr, mom, wd = float(group["lr"]), group["momentum"], group["weight_decay"]
        scales = None
        if scale is not None:  # cast once per dtype
            cast = {dtype: scale.to(dtype) for dtype in {d.dtype for d in dirs}}
            scales = [cast[d.dtype] for d in dirs]
        if mom != 0.0:
            bufs, ds, ss = [], [], []
            for k, (p, d) in enumerate(zip(params, dirs, strict=True)):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone() if scales is None else d * scales[k]
                else:
                    bufs.append(state["momentum_buffer"])
                    ds.append(d)
                    ss.append(None if scales is None else scales[k])
            if bufs:  # b <- m b + scale d: the clip folded into the heavy ball's one pass
                torch._foreach_mul_(bufs, mom)
                if scales is None:
                    torch._foreach_add_(bufs, ds)
                else:
                    torch._foreach_addcmul_(bufs, ds, ss)  # type: ignore[arg-type]
            dirs = [self.state[p]["momentum_buffer"] for p in params]
        elif scales is not None:
            dirs = [d * s for d, s in zip(dirs, scales, strict=True)]
        if wd != 0.0:
            torch._foreach_mul_(params, 1.0 - lr * wd)
        torch._foreach_add_(params, dirs, alpha=-lr)


def _history_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """``history_dtype`` as a torch dtype (names such as ``"bfloat16"`` accepted), or ``None``."""
    if value is None:
        return None
    dtype = HISTORY_DTYPES.get(value.removeprefix("torch.")) if isinstance(value, str) else value
    if dtype not in HISTORY_DTYPES.values():
        raise ValueError(f"Invalid history_dtype: {value!r} (float32, bfloat16 or float64)")
    return dtype


def _grad_of(p: Tensor) -> Tensor:
    if p.grad is None:
        return torch.zeros_like(p)
    if p.grad.is_sparse:
        raise RuntimeError("MLBFGS does not support sparse gradients")
    return p.grad
