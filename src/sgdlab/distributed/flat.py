"""The flat buffers the averages travel in: one copy of a list of tensors, end to end.

:meth:`~sgdlab.distributed.comm.Comm.average` copies its tensors into a new flat tensor, or into
a buffer from :func:`flat_buffer` that the caller reuses collective after collective (the
rounds of :class:`~sgdlab.distributed.core.CooperativeSGD` do).

>>> buf = flat_buffer([torch.ones(2), torch.zeros(1, 1)])
>>> flat_copy([torch.ones(2), torch.zeros(1, 1)], buf)
tensor([1., 1., 0.])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch._utils import _flatten_dense_tensors


def flat_buffer(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """An uninitialised flat buffer that :func:`flat_copy` can copy ``tensors`` into."""
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    return torch.empty(sum(t.numel() for t in tensors), dtype=dtype)


def flat_copy(tensors: Sequence[torch.Tensor], out: torch.Tensor | None) -> torch.Tensor:
    """``tensors`` copied, end to end, into ``out`` or a new flat tensor: one copy either way
    (a lone tensor's ``_flatten_dense_tensors`` is a view of it, hence the clone)."""
    if out is None:
        if len(tensors) == 1:
            return tensors[0].detach().reshape(-1).clone()
        return _flatten_dense_tensors([t.detach() for t in tensors])
    numel = sum(t.numel() for t in tensors)
    if out.dim() != 1 or out.numel() != numel:
        raise ValueError(f"Invalid out: {tuple(out.shape)} for {numel} elements (use flat_buffer)")
    return torch.cat([t.detach().reshape(-1) for t in tensors], out=out)
