"""The specification of mL-BFGS's curvature model: the two-loop recursion and the damping
factor, plain functions on lists of pairs and on numbers.

The optimizer computes the same on ring buffers, in compact form and on the device
(:mod:`sgdlab.optim._history`); tests check it against these. See :mod:`sgdlab.optim.mlbfgs`
for the method.

Example:
    >>> s, y = torch.tensor([1.0, 0.0]), torch.tensor([4.0, 0.0])  # curvature 4 along s
    >>> two_loop(torch.tensor([2.0, 0.0]), [s], [y], [1.0 / 4.0], gamma=0.25)
    tensor([0.5000, 0.0000])
    >>> damping_factor(-1.0, sigma_low=0.5, sigma_high=2.0)  # r = -1 moved onto 0.5
    0.25
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def check_damping(damping: Any) -> tuple[float, float, float]:
    """``damping`` as ``(sigma_low, sigma_high, delta)``; ``ValueError`` unless
    ``0 <= sigma_low < 1 < sigma_high`` and ``0 <= delta < 1`` (the band must contain the
    ratio 1 of ``y = s``, towards which damping moves)."""
    try:
        sigma_low, sigma_high, delta = (float(v) for v in damping)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid damping: {damping!r}") from None
    if not (0.0 <= sigma_low < 1.0 < sigma_high and 0.0 <= delta < 1.0):
        raise ValueError(f"Invalid damping: {damping!r}")
    return (sigma_low, sigma_high, delta)


def damping_factor(ratio: float, sigma_low: float, sigma_high: float) -> float:
    """The :math:`\\phi` that moves the curvature ratio onto the nearer edge of the band."""
    if ratio < sigma_low:
        return (1.0 - sigma_low) / (1.0 - ratio)
    if ratio > sigma_high:
        return (sigma_high - 1.0) / (ratio - 1.0)
    return 1.0


def two_loop(
    g: Tensor,
    s: list[Tensor],
    y: list[Tensor],
    rho: list[float],
    gamma: float,
    inplace: bool = False,
) -> Tensor:
    """:math:`H g` for the L-BFGS matrix of the pairs ``(s_i, y_i)``, oldest first, ``H_0 = γI``;
    written over ``g`` when ``inplace``.

    Nocedal & Wright, Algorithm 7.4: :math:`q \\leftarrow g`; newest to oldest,
    :math:`\\alpha_i = \\rho_i s_i^\\top q`, :math:`q \\leftarrow q - \\alpha_i y_i`; then
    :math:`r = \\gamma q`; oldest to newest, :math:`\\beta = \\rho_i y_i^\\top r`,
    :math:`r \\leftarrow r + (\\alpha_i - \\beta) s_i`.
    """
    q = g if inplace else g.clone()
    alphas: list[Tensor] = []
    for s_i, y_i, rho_i in zip(reversed(s), reversed(y), reversed(rho), strict=True):
        alpha = torch.dot(s_i, q) * rho_i
        q.addcmul_(y_i, alpha, value=-1.0)
        alphas.append(alpha)
    r = q.mul_(gamma)
    for s_i, y_i, rho_i, alpha in zip(s, y, rho, reversed(alphas), strict=True):
        beta = torch.dot(y_i, r) * rho_i
        r.addcmul_(s_i, alpha - beta)
    return r
