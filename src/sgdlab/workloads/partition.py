r"""Split a data set's indices across workers: IID, or non-IID by a Dirichlet draw per class.

Both return ``workers`` sorted int64 index arrays that are disjoint and together hold every
index ``0..n-1`` exactly once, and both are deterministic given ``seed``.

**IID.** A seeded permutation of ``0..n-1`` is cut into ``workers`` consecutive pieces of
sizes :math:`\lfloor n/W \rfloor` or :math:`\lceil n/W \rceil`; each worker's share is a uniform
random subset, so its label histogram matches the whole set up to sampling noise.

**Dirichlet(α).** The usual non-IID benchmark (Hsu, Qi, Brown, 2019): for each class
:math:`c` with :math:`n_c` examples draw proportions :math:`q_c \sim \mathrm{Dir}(\alpha\,
\mathbf 1_W)` and send :math:`(m_{c,1}, \dots, m_{c,W}) \sim \mathrm{Multinomial}(n_c, q_c)`
of its examples (a seeded shuffle) to workers :math:`1..W`. Since :math:`\mathbb E\,q_{c,w}
= 1/W` and :math:`\mathrm{Var}\,q_{c,w} = \frac{(W-1)/W^2}{W\alpha + 1}`, a large α gives every
worker about :math:`n_c / W` of each class (near IID) and :math:`\alpha \to 0` gives each
class to a single worker. A worker left with no example at all (possible for small α) takes
one from the worker holding the most, from that worker's largest class, until every worker
has one; ``n >= workers`` guarantees this ends.

>>> parts = partition_iid(10, 3, seed=0)
>>> [len(p) for p in parts], sorted(int(i) for p in parts for i in p) == list(range(10))
([4, 3, 3], True)
>>> labels = np.repeat(np.arange(4), 50)
>>> parts = partition_dirichlet(labels, 4, alpha=0.01, seed=0)
>>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 1
(200, True)
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def partition_iid(n: int, workers: int, seed: int) -> list[np.ndarray]:
    """Split ``range(n)`` into ``workers`` random parts whose sizes differ by at most one."""
    _check_count("n", n, 1)
    _check_workers(workers, n)
    _check_count("seed", seed, 0)
    permutation = np.random.default_rng(seed).permutation(n)
    return [np.sort(part).astype(np.int64) for part in np.array_split(permutation, workers)]


def partition_dirichlet(
    labels: np.ndarray, workers: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` so that each class spreads over workers as ``Dir(alpha)``.

    ``labels`` is a 1-D integer array (any values; each distinct value is a class). Every
    worker gets at least one index. Raises ``ValueError`` for ``workers < 1``,
    ``alpha <= 0`` (or not finite) or more workers than samples.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"Invalid labels: need a non-empty 1-D integer array, got shape {labels.shape} "
            f"dtype {labels.dtype}"
        )
    _check_workers(workers, labels.size)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (
        math.isfinite(alpha) and alpha > 0
    ):
        raise ValueError(f"Invalid alpha: {alpha} (need a finite alpha > 0)")
    _check_count("seed", seed, 0)

    rng = np.random.default_rng(seed)
    owner = np.empty(labels.size, dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        share = rng.dirichlet(np.full(workers, float(alpha)))
        counts = rng.multinomial(members.size, share / share.sum())
        owner[members] = np.repeat(np.arange(workers), counts)
    _fill_empty_workers(owner, labels, workers)
    order = np.argsort(owner, kind="stable")  # stable: indices stay ascending within a worker
    bounds = np.cumsum(np.bincount(owner, minlength=workers))[:-1]
    return [part.astype(np.int64) for part in np.split(order, bounds)]


def _fill_empty_workers(owner: np.ndarray, labels: np.ndarray, workers: int) -> None:
    sizes = np.bincount(owner, minlength=workers)
    for empty in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))
        held = np.flatnonzero(owner == donor)
        values, counts = np.unique(labels[held], return_counts=True)
        moved = held[labels[held] == values[np.argmax(counts)]][-1]
        owner[moved] = empty
        sizes[donor] -= 1
        sizes[empty] += 1


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r} (need an integer >= {minimum})")
    return int(value)


def _check_workers(workers: object, n: int) -> None:
    if _check_count("workers", workers, 1) > n:
        raise ValueError(f"Invalid workers: {workers} is more than the {n} samples to share")
