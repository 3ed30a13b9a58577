"""Blocks of parameters for a block-diagonal curvature model, and their owners across ranks.

mL-BFGS approximates the inverse Hessian block by block: ``H ≈ diag(H_1, ..., H_B)``, each
``H_b`` an L-BFGS matrix built from the pairs ``(s_b, y_b)`` restricted to the block. A *block
policy* says which parameter tensors form a block; :func:`assign_blocks` says which rank owns
(stores the history of, and runs the two-loop recursion for) each block.

Policies, over the optimizer's parameters in order (group by group):

* ``"layer"``: one block per parameter tensor. The optimizer sees tensors, not modules, so a
  layer's weight and bias are two blocks; for one block per module pass
  ``module_blocks(model)``.
* ``"size:<numel>"``: greedy packing of consecutive tensors into blocks of at most ``numel``
  elements; a tensor larger than ``numel`` is a block of its own.
* a callable ``f(params) -> list[list[int]]``: index lists into ``params``, every index in
  exactly one non-empty block.

Example:
    >>> shapes = [(4, 3), (4,), (2, 4), (2,)]
    >>> params = [torch.zeros(s) for s in shapes]
    >>> build_blocks(params, "layer")
    [[0], [1], [2], [3]]
    >>> build_blocks(params, "size:16")
    [[0, 1], [2, 3]]
    >>> assign_blocks([16, 10, 3], world_size=2)
    [0, 1, 1]
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

BlockPolicy = str | Callable[[list[torch.Tensor]], list[list[int]]]


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


def build_blocks(params: Sequence[torch.Tensor], policy: BlockPolicy) -> list[list[int]]:
    """Partition ``range(len(params))`` into blocks by ``policy`` (see the module docstring)."""
    n = len(params)
    if callable(policy):
        blocks = [list(b) for b in policy(list(params))]
        _check_partition(blocks, n)
        return blocks
    if policy == "layer":
        return [[i] for i in range(n)]
    limit = parse_size_policy(policy)
    packed: list[list[int]] = []
    current: list[int] = []
    filled = 0
    for i, p in enumerate(params):
        if current and filled + p.numel() > limit:
            packed.append(current)
            current, filled = [], 0
        current.append(i)
        filled += p.numel()
    if current:
        packed.append(current)
    return packed


def parse_size_policy(policy: object) -> int:
    """The ``numel`` of a ``"size:<numel>"`` policy; ``ValueError`` for anything else."""
    if isinstance(policy, str) and policy.startswith("size:"):
        text = policy[len("size:") :]
        if text.isdigit() and int(text) > 0:
            return int(text)
    raise ValueError(f"Invalid blocks: {policy!r}")


def check_policy(policy: object) -> None:
    """Raise ``ValueError`` unless ``policy`` is ``"layer"``, ``"size:<n>"`` or callable."""
    if not (callable(policy) or policy == "layer"):
        parse_size_policy(policy)


def module_blocks(model: torch.nn.Module) -> Callable[[list[torch.Tensor]], list[list[int]]]:
    """A block policy with one block per module that owns parameters directly.

    A parameter the optimizer holds that ``model`` does not own becomes a block of its own.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> build_blocks(list(net.parameters()), module_blocks(net))
        [[0, 1], [2, 3]]
    """
    groups = [[id(p) for p in m.parameters(recurse=False)] for m in model.modules()]

    def policy(params: list[torch.Tensor]) -> list[list[int]]:
        index = {id(p): i for i, p in enumerate(params)}
        blocks = [[index[k] for k in g if k in index] for g in groups]
        blocks = [b for b in blocks if b]
        seen = {i for b in blocks for i in b}
        return blocks + [[i] for i in range(len(params)) if i not in seen]

    return policy


def assign_blocks(sizes: Sequence[int], world_size: int) -> list[int]:
    """The owner rank of each block: greedy balance of the total size per rank.

    Blocks are taken largest first (ties: lower index first) and each goes to the rank with
    the least load so far (ties: lower rank). This is Graham's LPT rule; the final loads
    differ by at most the largest block, and the result depends only on the inputs.

    Example:
        >>> assign_blocks([5, 5, 5, 5], world_size=2)
        [0, 1, 0, 1]
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"Invalid world_size: {world_size}")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in sizes):
        raise ValueError(f"Invalid block sizes: {list(sizes)}")
    owners = [0] * len(sizes)
    loads = [(0, rank) for rank in range(world_size)]  # (load, rank): a min-heap
    for block in sorted(range(len(sizes)), key=lambda b: (-sizes[b], b)):
        load, rank = heapq.heappop(loads)
        owners[block] = rank
        heapq.heappush(loads, (load + sizes[block], rank))
    return owners


def _check_partition(blocks: list[list[int]], n: int) -> None:
    flat = [i for b in blocks for i in b]
    if any(not b for b in blocks) or sorted(flat) != list(range(n)):
        raise ValueError(
            f"Invalid blocks: the policy must put each of the {n} parameters in exactly one "
            f"non-empty block, got {blocks}"
        )
