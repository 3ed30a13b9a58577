"""Kernels of mL-BFGS on one block: the damping of a curvature pair and the two-loop recursion.

Plain functions on flat tensors, so that they can be checked alone; see
:mod:`sgdlab.optim.mlbfgs` for how the optimizer uses them.

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


def damp_pair(s: Tensor, y: Tensor, damping: tuple[float, float, float]) -> tuple[Tensor, float]:
    """``(y_damped, phi)``: :math:`y \\leftarrow \\phi y + (1-\\phi) s` with
    :math:`\\phi = \\min(\\phi_{band}, 1-\\delta)`; ``y`` is updated in place when damped.

    ``s`` must be non-zero. With :math:`r = s^\\top y / s^\\top s`, the damped ratio is
    :math:`\\phi r + 1 - \\phi`: on the band's edge when :math:`\\phi_{band} < 1`, and
    between :math:`r` and 1 (so still in the band) when only :math:`\\delta` acts.
    """
    sigma_low, sigma_high, delta = damping
    ratio = float(torch.dot(s, y)) / float(torch.dot(s, s))
    phi = min(damping_factor(ratio, sigma_low, sigma_high), 1.0 - delta)
    if phi < 1.0:
        y = y.mul_(phi).add_(s, alpha=1.0 - phi)
    return y, phi


def two_loop(g: Tensor, s: list[Tensor], y: list[Tensor], rho: list[float], gamma: float) -> Tensor:
    """:math:`H g` for the L-BFGS matrix of the pairs ``(s_i, y_i)``, oldest first, ``H_0 = γI``.

    Nocedal & Wright, Algorithm 7.4: :math:`q \\leftarrow g`; newest to oldest,
    :math:`\\alpha_i = \\rho_i s_i^\\top q`, :math:`q \\leftarrow q - \\alpha_i y_i`; then
    :math:`r = \\gamma q`; oldest to newest, :math:`\\beta = \\rho_i y_i^\\top r`,
    :math:`r \\leftarrow r + (\\alpha_i - \\beta) s_i`.
    """
    q = g.clone()
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
