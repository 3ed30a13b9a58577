"""Where an mL-BFGS step computes its owned blocks' directions: one preallocated buffer per
dtype, reused at every step, with the views a step needs made once.

A block's *record* is its flat direction followed by one slot for the direction's norm (what
:class:`~sgdlab.optim._blocks.DirectionExchange` sends). A step copies the gradients into
the records with one ``_foreach_copy_``, overwrites them with the directions, writes the
norms with one more, and hands each parameter a view of its slice: no per-step allocation,
concatenation or slicing per block.

Each record starts at a multiple of :data:`ALIGN_BYTES` from the buffer's start, which the
allocators align at least as much (CPU 64 bytes, CUDA 512): a record is as aligned as a
fresh allocation of its own, on every rank whatever blocks it owns. That keeps the sharded
step equal to the single-rank step by construction, since a BLAS product (the history's
``W g``, ``W^T c``) may round differently at another alignment.

The buffers are scratch, not state: nothing in them outlives a step but the blocks' compact
matrices (derived from the state, and made again whenever it changes), they are not in
``state_dict()``, and a copied or reloaded optimizer builds its own. They hold the owned
elements once more (plus the padding), which a step used to allocate afresh.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

ALIGN_BYTES = 512


class Records:
    """The records of the blocks ``owned`` (indices into ``blocks``), over ``params``."""

    def __init__(
        self, params: list[Tensor], blocks: list[list[int]], owned: list[int]
    ) -> None:
        self.owned = list(owned)
        sizes = {b: sum(params[i].numel() for i in blocks[b]) for b in owned}
        dtypes = {b: functools.reduce(torch.promote_types, (params[i].dtype for i in blocks[b]))
                  for b in owned}
        # Offsets per dtype: each record rounded up to the alignment.
        offsets: dict[int, int] = {}
        lengths: dict[torch.dtype, int] = {}
        for b in owned:
            step = max(1, ALIGN_BYTES // dtypes[b].itemsize)
            start = lengths.get(dtypes[b], 0)
            offsets[b] = start
            lengths[dtypes[b]] = start + -(-(sizes[b] + 1) // step) * step
        device = params[0].device if params else torch.device("cpu")
        # Zeros, so that the padding between records is finite (whole-buffer passes see it).
        self.buffers = [torch.zeros(n, dtype=dtype, device=device) for dtype, n in lengths.items()]
        by_dtype = dict(zip(lengths, self.buffers, strict=True))
        self.records: dict[int, Tensor] = {
            b: by_dtype[dtypes[b]][offsets[b] : offsets[b] + sizes[b] + 1] for b in owned
        }
        self.dirs = [self.records[b][:-1] for b in owned]
        self.norm_slots = [self.records[b][-1] for b in owned]
        # One view per parameter of an owned block, shaped like it: the gradient's target.
        self.sources: list[int] = []
        self.targets: list[Tensor] = []
        self.views: dict[int, Tensor] = {}
        for b in owned:
            offset = 0
            for i in blocks[b]:
                n = params[i].numel()
                view = self.records[b][offset : offset + n].view_as(params[i])
                self.sources.append(i)
                self.targets.append(view)
                self.views[i] = view
                offset += n

        # The blocks' compact matrices between pair steps (sgdlab.optim._history.directions).
        self.compact: dict[str, Any] = {}

    def fill(self, grads: list[Tensor]) -> None:
        """Copy each owned block's gradients into its record (one operation)."""
        if self.targets:
            torch._foreach_copy_(self.targets, [grads[i] for i in self.sources])

    def set_norms(self, norms: list[Tensor]) -> None:
        """Write each owned block's norm (0-d tensors, in ``owned`` order) into its slot."""
        if norms:
            torch._foreach_copy_(self.norm_slots, norms)
