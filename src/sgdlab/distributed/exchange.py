r"""mL-BFGS blocks shared out across ranks: the direction exchange over ``torch.distributed``.

:class:`~sgdlab.optim.MLBFGS` approximates the inverse Hessian block by block and, given an
``exchange``, runs the two-loop recursion only for the blocks its rank owns (owners chosen by
:func:`sgdlab.optim.assign_blocks`, a greedy balance of block sizes). This module is that
exchange: each rank packs its blocks' directions, in block order, into one flat buffer padded
to the largest rank's load, and a single ``all_gather`` hands every rank every buffer, from
which the blocks are cut out again. The result is bit for bit what each owner computed, so a
sharded step equals the single-rank step.

The block sizes and dtypes are agreed once per ownership map with one small all-reduce
(each rank contributes the sizes and dtypes of the blocks it owns, zeros elsewhere), so a rank
that owns no block still knows every other rank's layout. The buffer has the dtype to which
all the blocks' promote (float32 for bfloat16 beside float16), which holds each of them
exactly, and each block is cut out again in its owner's dtype.

Example (one process, no group: the exchange hands back what it was given)::

    >>> import torch
    >>> ex = BlockExchange()
    >>> ex.gather_directions({0: torch.ones(2)}, owners=[0])[0]
    tensor([1., 1.])
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from sgdlab.distributed.comm import Comm

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class BlockExchange:
    """A :class:`sgdlab.optim.DirectionExchange` over the default process group (gloo or NCCL).

    A collective: every rank calls :meth:`gather_directions` at the same step.
    """

    def __init__(self, comm: Comm | None = None) -> None:
        self.comm = comm or Comm()
        self._layout: (
            tuple[tuple[int, ...], list[int], list[torch.dtype], torch.dtype] | None
        ) = None
        self.calls = 0

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def world_size(self) -> int:
        return self.comm.world_size

    def gather_directions(self, local: dict[int, Tensor], owners: list[int]) -> dict[int, Tensor]:
        """Every block's flat direction, each taken from the rank that owns it."""
        foreign = sorted(b for b in local if owners[b] != self.rank)
        if foreign:
            raise ValueError(
                f"Invalid local directions: blocks {foreign} are not owned by rank {self.rank}"
            )
        self.calls += 1
        if not self.comm.distributed:
            return dict(local)
        sizes, dtypes, dtype = self._agree(local, owners)
        device = next(iter(local.values())).device if local else torch.device("cpu")
        mine = [b for b in range(len(owners)) if owners[b] == self.rank]
        load = [
            sum(sizes[b] for b in range(len(owners)) if owners[b] == r)
            for r in range(self.world_size)
        ]
        width = max(max(load), 1)
        buffer = torch.zeros(width, dtype=dtype, device=device)
        offset = 0
        for b in mine:
            buffer[offset : offset + sizes[b]] = local[b].reshape(-1)
            offset += sizes[b]
        gathered = self.comm.all_gather(buffer, "all-gather of mL-BFGS directions")
        out: dict[int, Tensor] = {}
        cursor = [0] * self.world_size
        for b, owner in enumerate(owners):
            start = cursor[owner]
            if owner == self.rank:
                out[b] = local[b]
            else:  # back in its owner's dtype (exactly: the buffer's dtype holds it)
                out[b] = gathered[owner][start : start + sizes[b]].to(dtypes[b])
            cursor[owner] = start + sizes[b]
        return out

    def _agree(
        self, local: dict[int, Tensor], owners: list[int]
    ) -> tuple[list[int], list[torch.dtype], torch.dtype]:
        """Block sizes and dtypes, and the buffer's dtype (theirs promoted), the same on every
        rank (cached per ownership map)."""
        key = tuple(owners)
        if self._layout is not None and self._layout[0] == key:
            return self._layout[1], self._layout[2], self._layout[3]
        n = len(owners)
        info = torch.zeros(2 * n, dtype=torch.int64)  # sizes, then dtype codes (0: none)
        for b, d in local.items():
            info[b] = d.numel()
            info[n + b] = _DTYPES.index(d.dtype) + 1
        self.comm.max_(info, "all-reduce (block sizes)")
        sizes = [int(v) for v in info[:n]]
        dtypes = [_DTYPES[int(v) - 1] if int(v) else torch.float32 for v in info[n:]]
        dtype = functools.reduce(torch.promote_types, dtypes, dtypes[0]) if n else torch.float32
        self._layout = (key, sizes, dtypes, dtype)
        return sizes, dtypes, dtype
