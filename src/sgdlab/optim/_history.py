r"""One block's curvature history on ring buffers, and :math:`H g` in compact form.

The pairs of a block live in one preallocated tensor ``W`` of shape ``(2m, n)``: rows
``0..m-1`` hold the ``s`` vectors and rows ``m..2m-1`` the ``y`` vectors, each pair in the ring
slot ``k = head mod m`` it was written to, with a mask ``valid`` of the slots that hold a kept
pair. Beside it the Gram matrix :math:`G = W W^\top` (``2m x 2m``), updated by one product
when a pair is written, so that a step never forms an inner product of two stored pairs.

Everything a step decides (keep or reject a pair, damp it, reset after a NaN) is a device
tensor selected with ``torch.where``: no ``.item()``, ``float()`` or ``.tolist()``, so the step
never waits for the device.

**Compact form** (Byrd, Nocedal, Schnabel 1994, Thm 2.2; Nocedal & Wright eq. 7.24). With the
kept pairs oldest first, :math:`a = S^\top g`, :math:`b = Y^\top g`, :math:`R` the upper
triangle of :math:`S^\top Y` and :math:`D` its diagonal,

.. math:: H g = \gamma g + S p + \gamma Y q, \quad u = R^{-1} a, \quad q = -u, \quad
          p = R^{-\top}\big((D + \gamma Y^\top Y) u - \gamma b\big),

which is what the two-loop recursion (:func:`sgdlab.optim._curvature.two_loop`, the
specification) computes. One product ``W g`` gives :math:`a, b`; ``c`` is linear in them,
:math:`c = M\,W g` with a ``2m x 2m`` matrix :math:`M` of the history alone
(:func:`compact_matrices`: the triangular solves, in float64 for all blocks at once), which
the optimizer makes again only when the history changes (a pair step, a reset), so that a
step between pair steps does one small batched product; one product ``W^T c`` goes back. A
slot that holds no pair gets a unit diagonal in :math:`R` and zeros elsewhere, so it adds
nothing. The ring order is chronological from ``head`` on (the slot written longest ago
first).

**A narrower history** (``store_dtype``, e.g. bfloat16 for float32 parameters) stores only
``W`` narrower: the Gram matrix, :math:`\gamma` and the solves stay in the parameters' dtype,
and the Gram rows of a new pair are the products of the *stored* (rounded) rows, so that
:math:`G = W W^\top` holds for the ``W`` the products use. The two products with ``W`` take
its dtype's operands (the gradient and ``c`` rounded to it) and accumulate in float32, as
ATen's and cuBLAS's bfloat16 kernels do; their outputs are rounded to it once. A step then
reads half the bytes of the history, the one part of it that grows with ``m``.

Example:
    >>> h = new_history(2, 3, torch.float64, torch.device("cpu"))
    >>> s, y = torch.tensor([1.0, 0.0]), torch.tensor([4.0, 0.0])  # curvature 4 along s
    >>> _ = add_pair(h, s.double(), y.double(), (0.0, float("inf"), 0.0), 0.0)
    >>> c, gamma, ok = compact_coefficients([h], [h["pairs"] @ torch.tensor([2.0, 0.0]).double()])
    >>> (gamma[0] * torch.tensor([2.0, 0.0]).double() + h["pairs"].T @ c[0]).tolist()
    [0.5, 0.0]
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

# Events counted per block (device tensors), readable through MLBFGS.diagnostics().
COUNTERS = ("accepted", "damped", "rejected", "nonfinite_resets", "nonfinite_grads")
# The block's entries that are not floating point: torch's load_state_dict casts every tensor
# of the state to its parameter's dtype, so these are cast back after a load.
INTEGER_KEYS = (*COUNTERS, "head")
BOOL_KEYS = ("valid", "has_avg")


def new_history(
    n: int, m: int, dtype: torch.dtype, device: torch.device, store_dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """An empty history of ``m`` pairs for a block of ``n`` elements, whose math runs in
    ``dtype`` and whose pairs are stored in ``store_dtype`` (default ``dtype``)."""
    return {
        "pairs": torch.zeros(2 * m, n, dtype=store_dtype or dtype, device=device),
        "gram": torch.zeros(2 * m, 2 * m, dtype=dtype, device=device),
        "valid": torch.zeros(m, dtype=torch.bool, device=device),
        "head": torch.zeros((), dtype=torch.long, device=device),
        "gamma": torch.ones((), dtype=dtype, device=device),
        "has_avg": torch.zeros((), dtype=torch.bool, device=device),
        **{key: torch.zeros((), dtype=torch.long, device=device) for key in COUNTERS},
    }


def restore_dtypes(
    block: dict[str, Any],
    saved: dict[str, Any] | None,
    dtype: torch.dtype,
    store_dtype: torch.dtype,
) -> None:
    """Undo torch's load-time cast of the block's entries to its parameter's dtype: each back
    to the dtype the block keeps it in (the integers ``long``, the masks ``bool``, the pairs
    ``store_dtype``, the rest the math's ``dtype``), taken from ``saved`` (the checkpoint's
    block, uncast) where that has it in this dtype, so exactly (a narrower float such as
    bfloat16 holds integers only to 256, and a float32 parameter rounds a float64 block)."""
    saved = saved or {}
    for key, value in list(block.items()):
        if not isinstance(value, Tensor):
            continue
        want = (torch.long if key in INTEGER_KEYS else torch.bool if key in BOOL_KEYS
                else store_dtype if key == "pairs" else dtype)
        original = saved.get(key)
        if isinstance(original, Tensor) and original.dtype == want:
            block[key] = original.to(value.device)
        else:
            block[key] = value.to(want)


def held(block: dict[str, Any]) -> Tensor:
    """How many pairs the block holds (a device tensor)."""
    return block["valid"].sum()


def damp_pair(s: Tensor, y: Tensor, damping: tuple[float, float, float]) -> tuple[Tensor, Tensor]:
    r"""``(y_damped, phi)``: :math:`y \leftarrow \phi y + (1-\phi) s` with
    :math:`\phi = \min(\phi_{band}, 1-\delta)` (see :func:`~sgdlab.optim._curvature.
    damping_factor`, the scalar specification), all on the device; ``s`` must be non-zero
    wherever the result is used."""
    phi = _damping_factors(torch.dot(s, y) / torch.dot(s, s), damping)
    # Undamped where phi = 1: y * 1 + s * 0 is y (s is finite wherever the pair is kept).
    return y * phi + s * (1.0 - phi), phi


def add_pair(
    block: dict[str, Any],
    s: Tensor,
    y: Tensor,
    damping: tuple[float, float, float],
    pair_momentum: float,
    blend_damped: bool = False,
) -> Tensor:
    r"""Smooth, damp and keep ``(s, y)`` in the next ring slot; returns a device bool, true
    when the pair was not finite (the history is then reset).

    Pair momentum: :math:`s \leftarrow \mu_p s_{prev} + (1-\mu_p) s`, the same for :math:`y`,
    with the previous *undamped* smoothed pair (with ``blend_damped``, as the authors' code,
    with the previous damped one). A pair with :math:`s = 0`, or with
    :math:`s^\top y \le 0` after damping, is rejected and the history kept. A kept pair sets
    :math:`\gamma = s^\top y / y^\top y`.
    """
    return add_pairs([block], [s], [y], damping, pair_momentum, blend_damped)[0]


def add_pairs(
    blocks: list[dict[str, Any]],
    s_list: list[Tensor],
    y_list: list[Tensor],
    damping: tuple[float, float, float],
    pair_momentum: float,
    blend_damped: bool = False,
) -> Tensor:
    """:func:`add_pair` for each block with its ``(s, y)``; returns the blocks' non-finite
    flags ``(B,)``. The inner products are each block's own; the decisions on them (damping,
    keep or reject, gamma, the counters) are taken once for all blocks of one dtype on
    stacked tensors, with the same numbers as one block at a time. (Blocks of another dtype
    are taken apart: stacking would promote a float32 block's numbers to float64, and a
    sharded rank, which stacks other blocks, would then round otherwise than a single one.)"""
    by_dtype: dict[torch.dtype, list[int]] = {}
    for k, s in enumerate(s_list):
        by_dtype.setdefault(s.dtype, []).append(k)
    if len(by_dtype) <= 1:
        return _add_pairs_of_one_dtype(blocks, s_list, y_list, damping, pair_momentum,
                                       blend_damped)
    flags: dict[int, Tensor] = {}
    for members in by_dtype.values():
        bad = _add_pairs_of_one_dtype([blocks[k] for k in members], [s_list[k] for k in members],
                                      [y_list[k] for k in members], damping, pair_momentum,
                                      blend_damped)
        for k, flag in zip(members, bad.unbind(), strict=True):
            flags[k] = flag
    return torch.stack([flags[k] for k in range(len(blocks))])


def _add_pairs_of_one_dtype(
    blocks: list[dict[str, Any]],
    s_list: list[Tensor],
    y_list: list[Tensor],
    damping: tuple[float, float, float],
    pair_momentum: float,
    blend_damped: bool,
) -> Tensor:
    """:func:`add_pairs` for blocks whose pairs share one dtype."""
    s_list, y_list = list(s_list), list(y_list)
    if pair_momentum > 0.0:
        for k, blk in enumerate(blocks):
            s, y = s_list[k], y_list[k]
            if "s_avg" in blk:
                has = blk["has_avg"]
                s = torch.where(has, s * (1.0 - pair_momentum) + blk["s_avg"] * pair_momentum, s)
                y = torch.where(has, y * (1.0 - pair_momentum) + blk["y_avg"] * pair_momentum, y)
            blk["s_avg"], blk["y_avg"] = s.clone(), y.clone()
            blk["has_avg"] = torch.ones_like(blk["has_avg"])
            s_list[k], y_list[k] = s, y
    ss = torch.stack([torch.dot(s, s) for s in s_list])
    yy = torch.stack([torch.dot(y, y) for y in y_list])
    finite = torch.isfinite(ss) & torch.isfinite(yy)
    phi = _damping_factors(torch.stack([torch.dot(s, y) for s, y in zip(s_list, y_list,
                                                                         strict=True)]) / ss,
                           damping)
    # Undamped where phi = 1: y * 1 + s * 0 is y (s is finite wherever the pair is kept).
    y_list = [y * phi_k + s * rest_k for y, s, phi_k, rest_k
              in zip(y_list, s_list, phi.unbind(), (1.0 - phi).unbind(), strict=True)]
    if pair_momentum > 0.0 and blend_damped:
        for blk, y in zip(blocks, y_list, strict=True):
            blk["y_avg"] = y.clone()
    sy = torch.stack([torch.dot(s, y) for s, y in zip(s_list, y_list, strict=True)])
    yy = torch.stack([torch.dot(y, y) for y in y_list])
    keep = finite & (ss > 0) & (sy > 0) & (yy > 0) & torch.isfinite(sy) & torch.isfinite(yy)
    for blk, s, y, keep_k in zip(blocks, s_list, y_list, keep.unbind(), strict=True):
        _write_pair(blk, s, y, keep_k)
    newest = sy / yy
    rejected = finite & ~keep
    damped = keep & (phi < 1.0)
    for blk, keep_k, newest_k, damped_k, rejected_k in zip(
        blocks, keep.unbind(), newest.unbind(), damped.unbind(), rejected.unbind(), strict=True
    ):
        blk["head"] = blk["head"] + keep_k
        blk["gamma"] = torch.where(keep_k, newest_k.to(blk["gamma"].dtype), blk["gamma"])
        blk["accepted"] = blk["accepted"] + keep_k
        blk["damped"] = blk["damped"] + damped_k
        blk["rejected"] = blk["rejected"] + rejected_k
    bad = ~finite
    _reset_each(blocks, bad)
    return bad


def _damping_factors(ratio: Tensor, damping: tuple[float, float, float]) -> Tensor:
    r""":math:`\phi` of :func:`damp_pair` for curvature ratios ``ratio`` (any shape)."""
    sigma_low, sigma_high, delta = damping
    one = torch.ones_like(ratio)
    phi = torch.where(
        ratio < sigma_low,
        (1.0 - sigma_low) / (1.0 - ratio),
        torch.where(ratio > sigma_high, (sigma_high - 1.0) / (ratio - 1.0), one),
    )
    return torch.clamp(phi, max=1.0 - delta)


def _write_pair(block: dict[str, Any], s: Tensor, y: Tensor, keep: Tensor) -> None:
    """Write ``(s, y)`` into the block's next ring slot and the Gram matrix where ``keep``."""
    pairs, m = block["pairs"], block["valid"].numel()
    slot = torch.remainder(block["head"], m).reshape(1)
    rows = torch.cat([slot, slot + m])
    old = pairs.index_select(0, rows)
    new = torch.stack([s, y]).to(pairs.dtype)
    pairs.index_copy_(0, rows, torch.where(keep, new, old))
    # The Gram matrix's two new rows (and columns) from the rows now stored.
    stored = pairs.index_select(0, rows)
    gram = block["gram"]
    if pairs.dtype == gram.dtype:
        cross = torch.stack([pairs @ stored[0], pairs @ stored[1]], dim=1)  # (2m, 2), two passes
    else:  # a narrower history: the stored rows' products in the math dtype (pair steps only)
        cross = _widened_products(pairs, rows, gram.dtype)
    fresh = gram.index_copy(1, rows, cross).index_copy(0, rows, cross.T)
    block["gram"] = torch.where(keep, fresh, gram)
    block["valid"] = block["valid"].index_copy(0, slot, block["valid"].index_select(0, slot) | keep)


def compact_coefficients(
    blocks: list[dict[str, Any]], projections: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    r"""For blocks of one history size, with ``projections[i] = W_i g_i``: the coefficients
    ``c`` (``(B, 2m)``, float64) and the ``gamma`` (``(B,)``) such that :math:`H_i g_i =
    \gamma_i g_i + W_i^\top c_i`, and whether each block's ``c`` is finite. Where it is not,
    ``c`` is 0 and ``gamma`` 1 (the block then follows its gradient)."""
    gamma = _stack64([b["gamma"] for b in blocks])
    matrices = compact_matrices(_stack64([b["gram"] for b in blocks]),
                                torch.stack([b["valid"] for b in blocks]),
                                torch.stack([b["head"] for b in blocks]), gamma)
    return apply_compact(matrices, _stack64(projections), gamma)


def compact_matrices(gram: Tensor, valid: Tensor, head: Tensor, gamma: Tensor) -> Tensor:
    r"""The matrices ``M`` (``(B, 2m, 2m)``, float64) with :math:`c = M\,W g` for the blocks'
    stacked Gram matrices ``(B, 2m, 2m)`` (float64), masks ``(B, m)``, heads and gammas
    ``(B,)``: the compact form's coefficients are linear in the projections, through

    .. math:: \begin{pmatrix} p \\ q \end{pmatrix} = \begin{pmatrix}
              R^{-\top}(D + \gamma Y^\top Y) R^{-1} & -\gamma R^{-\top} \\
              -\gamma R^{-1} & 0 \end{pmatrix} \begin{pmatrix} a \\ b \end{pmatrix}

    in chronological order (see the module docstring). They change only with the history,
    i.e. at a pair step or a reset, so a step that reuses them does one small product
    instead of two triangular solves and the reordering. Slots that hold no pair get zero
    rows and columns (their ``a`` and ``b`` are masked out, and ``R`` is the identity there).
    """
    f64 = torch.float64
    m = valid.shape[1]
    # Oldest first: the slot at head was written longest ago; the y rows follow, m further.
    order = torch.remainder(head[:, None] + _arange(m, head.device), m)  # (B, m)
    both = torch.cat([order, order + m], dim=1)  # (B, 2m)
    v = torch.gather(valid, 1, order).to(f64)
    v2 = v.repeat(1, 2)
    ordered = gram.gather(1, both[:, :, None].expand(-1, -1, 2 * m))
    ordered = ordered.gather(2, both[:, None, :].expand(-1, 2 * m, -1))
    ordered = ordered * (v2[:, :, None] * v2[:, None, :])
    sy, yy = ordered[:, :m, m:], ordered[:, m:, m:]
    r = torch.triu(sy) + torch.diag_embed(1.0 - v)
    eye = torch.eye(m, dtype=f64, device=gram.device).expand_as(r)
    r_inv = torch.linalg.solve_triangular(r, eye, upper=True)
    r_inv_t = r_inv.transpose(1, 2)
    middle = torch.diag_embed(torch.diagonal(sy, dim1=1, dim2=2)) + gamma[:, None, None] * yy
    g = -gamma[:, None, None]
    chrono = torch.cat([torch.cat([r_inv_t @ middle @ r_inv, g * r_inv_t], dim=2),
                        torch.cat([g * r_inv, torch.zeros_like(r_inv)], dim=2)], dim=1)
    chrono = chrono * v2[:, None, :]  # the projections of empty slots count for nothing
    # Back to ring slots: row and column both[k] of the result is row and column k here.
    inverse = torch.empty_like(both).scatter_(1, both, _arange(2 * m, head.device).expand_as(both))
    out = chrono.gather(1, inverse[:, :, None].expand(-1, -1, 2 * m))
    return out.gather(2, inverse[:, None, :].expand(-1, 2 * m, -1))


def apply_compact(
    matrices: Tensor, proj: Tensor, gamma: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(c, gamma, ok)`` of :func:`compact_coefficients` from the blocks' :func:`compact_matrices`,
    their projections ``(B, 2m)`` and gammas ``(B,)``, all float64."""
    c = (matrices @ proj[:, :, None])[:, :, 0]
    ok = torch.isfinite(c).all(dim=1) & torch.isfinite(gamma)
    return torch.where(ok[:, None], c, 0.0), torch.where(ok, gamma, 1.0), ok


def from_pairs(
    s: list[Tensor], y: list[Tensor], gamma: float, m: int, like: Tensor, counters: dict[str, Any]
) -> dict[str, Any]:
    """A ring-buffer history holding the pairs ``(s_i, y_i)``, oldest first (as checkpoints of
    the list layout kept them), with the newest pair's ``gamma`` and the block's counters;
    ``like`` is a flat tensor of the block's size, dtype and device."""
    block = new_history(like.numel(), m, like.dtype, like.device)
    pairs = block["pairs"]
    kept = list(zip(s, y, strict=True))[-m:]
    for k, (s_k, y_k) in enumerate(kept):
        pairs[k], pairs[m + k] = s_k, y_k
        block["valid"][k] = True
    block["head"].fill_(len(kept) % m)
    block["gram"] = pairs @ pairs.T
    block["gamma"].fill_(float(gamma))
    for key in COUNTERS:
        block[key].fill_(int(counters.get(key, 0)))
    return block


def from_list_layout(old: dict[str, Any], m: int, like: Tensor) -> dict[str, Any]:
    """The ring-buffer block of a checkpoint's list-layout block (``"s"``, ``"y"``, ``"rho"``
    lists, ``gamma`` and the counters as numbers, ``s_avg`` possibly ``None``)."""
    ring = from_pairs(old["s"], old["y"], old["gamma"], m, like, old)
    ring["params"] = list(old["params"])
    for key in ("param_snapshot", "grad_snapshot"):
        if key in old:
            ring[key] = old[key]
    if old.get("s_avg") is not None:
        ring.update(s_avg=old["s_avg"], y_avg=old["y_avg"])
        ring["has_avg"].fill_(True)
    return ring


def directions(
    blocks: list[dict[str, Any]],
    dirs: list[Tensor],
    curvature: bool,
    whole: list[Tensor] | None = None,
    cache: dict[str, Any] | None = None,
) -> list[Tensor]:
    r"""Overwrite each flat gradient ``dirs[i]`` with its block's direction; returns the
    directions' norms (0-d tensors), all on the device.

    With ``curvature``, :math:`d = \gamma g + W^\top c` (:func:`compact_coefficients`); a
    non-finite ``c`` from a finite gradient resets the block's history (the block then follows
    its gradient). A direction that is still not finite (its gradient is not) becomes zeros,
    with norm 0, and is counted in ``nonfinite_grads``. The norms are ATen's (``_foreach_norm``,
    i.e. ``vector_norm``), whose order depends on the element count alone, not on where the
    tensor lies in memory (MKL's ``dot`` does not). ``whole``, if given, are tensors that hold
    every direction and are finite elsewhere: the non-finite entries are zeroed there, in one
    pass each instead of one per block. ``cache`` (a dict kept by the caller between steps)
    keeps the blocks' :func:`compact_matrices`, made again whenever a block's Gram matrix,
    mask, head or gamma is another tensor or was written in place since (and at every step
    for tensors made under ``torch.inference_mode``, which keep no version counter).

    The blocks' small decisions are taken once for all of them on stacked tensors, and each
    block's share is handed out by ``unbind`` and ``_foreach`` operations: a step's cost in
    operations grows with the blocks only by what touches each block's own tensors.
    """
    if not dirs:
        return []
    if curvature and blocks:
        proj = _stack64([blk["pairs"] @ _as(d, blk["pairs"].dtype)
                         for blk, d in zip(blocks, dirs, strict=True)])
        matrices, kept_gamma, held_any = _cached_compact(blocks, cache)
        coeffs, gamma, ok = apply_compact(matrices, proj, kept_gamma)
        # A non-finite projection means a non-finite gradient, not the history's fault.
        bad = torch.isfinite(proj).all(dim=1) & ~ok & held_any
        _reset_each(blocks, bad)
        if cache is not None:  # the reset blocks' matrices, as recomputing them would give
            cache["value"] = (torch.where(bad[:, None, None], 0.0, matrices),
                              torch.where(bad, 1.0, kept_gamma), held_any & ~bad)
            cache["key"] = _compact_key(blocks)
        cast = _casts([t.dtype for blk, d in zip(blocks, dirs, strict=True)
                       for t in (d, blk["pairs"])], coeffs, gamma)
        torch._foreach_mul_(dirs, [cast[d.dtype][1][k] for k, d in enumerate(dirs)])
        for k, (blk, d) in enumerate(zip(blocks, dirs, strict=True)):
            pairs = blk["pairs"]
            if pairs.dtype == d.dtype:
                d.addmv_(pairs.T, cast[d.dtype][0][k])
            else:  # a narrower history: W^T c in its dtype, widened before the add (an
                # in-place add of another dtype takes ATen's slow casting path)
                d.add_((pairs.T @ cast[pairs.dtype][0][k]).to(d.dtype))
    norms = _stack64(list(torch._foreach_norm(dirs)))
    finite = torch.isfinite(norms)
    out = torch.where(finite, norms, 0.0)
    for blk, bad_k in zip(blocks, (~finite).unbind(), strict=True):
        blk["nonfinite_grads"] = blk["nonfinite_grads"] + bad_k
    # Zeros where not finite: times 0 leaves NaN and Inf entries NaN, which nan_to_num_
    # then zeroes (two vectorised passes; a where with a 0-d condition is not vectorised).
    keep = {dtype: finite.to(dtype).unbind() for dtype in {d.dtype for d in dirs}}
    torch._foreach_mul_(dirs, [keep[d.dtype][k] for k, d in enumerate(dirs)])
    for t in dirs if whole is None else whole:
        t.nan_to_num_(0.0, 0.0, 0.0)
    per_dtype = {dtype: out.to(dtype).unbind() for dtype in keep}
    return [per_dtype[d.dtype][k] for k, d in enumerate(dirs)]


def _compact_key(blocks: list[dict[str, Any]]) -> tuple[Any, ...] | None:
    """What the blocks' compact matrices are made of: each tensor and its version counter;
    ``None`` (nothing to keep them by) where one was made under ``torch.inference_mode``,
    whose tensors have no version counter."""
    tensors = [t for blk in blocks for t in (blk["gram"], blk["valid"], blk["head"], blk["gamma"])]
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((t, t._version) for t in tensors)


def _cached_compact(
    blocks: list[dict[str, Any]], cache: dict[str, Any] | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The blocks' compact matrices, gammas (float64) and whether each holds a pair: from
    ``cache`` while the history they were made of is unchanged, else made (and kept)."""
    if cache is not None and cache.get("key") is not None:
        key = cache["key"]
        current = [t for blk in blocks
                   for t in (blk["gram"], blk["valid"], blk["head"], blk["gamma"])]
        if len(key) == len(current) and all(
            k is t and v == t._version for (k, v), t in zip(key, current, strict=True)
        ):
            value: tuple[Tensor, Tensor, Tensor] = cache["value"]
            return value
    gamma = _stack64([blk["gamma"] for blk in blocks])
    valid = torch.stack([blk["valid"] for blk in blocks])
    matrices = compact_matrices(_stack64([blk["gram"] for blk in blocks]), valid,
                                torch.stack([blk["head"] for blk in blocks]), gamma)
    value = (matrices, gamma, valid.any(dim=1))
    if cache is not None:
        cache["key"], cache["value"] = _compact_key(blocks), value
    return value


def _reset_each(blocks: list[dict[str, Any]], bad: Tensor) -> None:
    """Forget the pairs of each block where ``bad`` (a device bool, stacked ``(B,)``) and count
    it: validity and the pair average's flag cleared, γ back to 1 (``has_avg`` exists only
    where a pair average is kept)."""
    good = ~bad
    for blk, bad_k, good_k in zip(blocks, bad.unbind(), good.unbind(), strict=True):
        blk["valid"] = blk["valid"] & good_k
        blk["gamma"] = torch.where(bad_k, 1.0, blk["gamma"])
        if "s_avg" in blk:
            blk["has_avg"] = blk["has_avg"] & good_k
        blk["nonfinite_resets"] = blk["nonfinite_resets"] + bad_k


@functools.lru_cache(maxsize=8)
def _arange(m: int, device: torch.device) -> Tensor:
    """``torch.arange(m)`` on ``device``, made once (never written to)."""
    return torch.arange(m, device=device)


# Columns of a narrower history widened at a time for the Gram rows: a few MB, so the widened
# slice stays in cache (a whole-width copy of W, allocated and faulted in at every pair step,
# cost 6x the products on a 2M-element block).
_WIDEN_COLUMNS = 16384


def _widened_products(pairs: Tensor, rows: Tensor, dtype: torch.dtype) -> Tensor:
    """``W W[rows]^T`` (``(2m, len(rows))``) in ``dtype``, for a ``W`` stored narrower: each
    slice of columns widened, then multiplied and summed."""
    out = torch.zeros(pairs.shape[0], len(rows), dtype=dtype, device=pairs.device)
    for start in range(0, pairs.shape[1], _WIDEN_COLUMNS):
        wide = pairs[:, start : start + _WIDEN_COLUMNS].to(dtype)
        out.addmm_(wide, wide.index_select(0, rows).T)
    return out


def _stack64(tensors: list[Tensor]) -> Tensor:
    """``tensors`` (of one shape) stacked as one float64 tensor."""
    if len({t.dtype for t in tensors}) == 1:
        return _as(torch.stack(tensors), torch.float64)
    return torch.stack([t.to(torch.float64) for t in tensors])


def _casts(
    dtypes: list[torch.dtype], coeffs: Tensor, gamma: Tensor
) -> dict[torch.dtype, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]:
    """``coeffs`` and ``gamma`` cast once to each of the blocks' dtypes, one entry a block."""
    return {dtype: (_as(coeffs, dtype).unbind(), _as(gamma, dtype).unbind())
            for dtype in set(dtypes)}


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` (itself, with no dispatch, when it already is)."""
    return t if t.dtype == dtype else t.to(dtype)
