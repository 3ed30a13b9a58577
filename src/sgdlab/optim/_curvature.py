"""One block of mL-BFGS: its history of curvature pairs, their damping, the two-loop recursion.

Plain functions on flat tensors and on the block's state dict (what the optimizer keeps under
the block's first parameter), so that they can be checked alone; see
:mod:`sgdlab.optim.mlbfgs` for the method and how the optimizer uses them.

Example:
    >>> s, y = torch.tensor([1.0, 0.0]), torch.tensor([4.0, 0.0])  # curvature 4 along s
    >>> two_loop(torch.tensor([2.0, 0.0]), [s], [y], [1.0 / 4.0], gamma=0.25)
    tensor([0.5000, 0.0000])
    >>> damping_factor(-1.0, sigma_low=0.5, sigma_high=2.0)  # r = -1 moved onto 0.5
    0.25
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

# Events counted per block, readable through MLBFGS.diagnostics().
COUNTERS = ("accepted", "damped", "rejected", "nonfinite_resets", "nonfinite_grads")


def new_block_state(params: list[int]) -> dict[str, Any]:
    """An empty history for the block of parameters ``params`` (indices, for checkpoints)."""
    return {
        "params": list(params),
        "s": [],
        "y": [],
        "rho": [],
        "gamma": 1.0,
        "s_avg": None,
        "y_avg": None,
        **dict.fromkeys(COUNTERS, 0),
    }


def reset_history(block: dict[str, Any]) -> None:
    """Forget the pairs (after a NaN or Inf), and count it."""
    block["s"], block["y"], block["rho"] = [], [], []
    block["s_avg"] = block["y_avg"] = None
    block["gamma"] = 1.0
    block["nonfinite_resets"] += 1


def add_pair(
    block: dict[str, Any],
    s: Tensor,
    y: Tensor,
    damping: tuple[float, float, float],
    history_size: int,
    pair_momentum: float,
) -> str:
    """Smooth, damp and keep the pair ``(s, y)``; says ``accepted``, ``rejected`` or
    ``nonfinite`` (the history is then reset). ``s`` and ``y`` may be changed in place.

    Pair momentum: :math:`s \\leftarrow \\mu_p s_{prev} + (1-\\mu_p) s`, the same for
    :math:`y`, with the previous *undamped* smoothed pair. A kept pair enters the FIFO history
    with :math:`\\rho = 1/s^\\top y` and sets :math:`\\gamma = s^\\top y / y^\\top y`.
    """
    if pair_momentum > 0.0:
        if block["s_avg"] is not None:
            s = s.mul_(1.0 - pair_momentum).add_(block["s_avg"], alpha=pair_momentum)
            y = y.mul_(1.0 - pair_momentum).add_(block["y_avg"], alpha=pair_momentum)
        block["s_avg"], block["y_avg"] = s.clone(), y.clone()
    ss, yy = float(torch.dot(s, s)), float(torch.dot(y, y))
    if not (math.isfinite(ss) and math.isfinite(yy)):
        reset_history(block)
        return "nonfinite"
    if ss == 0.0:
        block["rejected"] += 1
        return "rejected"
    y, phi = damp_pair(s, y, damping)
    sy, yy = float(torch.dot(s, y)), float(torch.dot(y, y))
    if not (0.0 < sy < math.inf and 0.0 < yy < math.inf):
        block["rejected"] += 1
        return "rejected"
    if len(block["s"]) == history_size:
        for key in ("s", "y", "rho"):
            block[key].pop(0)
    block["s"].append(s)
    block["y"].append(y)
    block["rho"].append(1.0 / sy)
    block["gamma"] = sy / yy
    block["accepted"] += 1
    block["damped"] += int(phi < 1.0)
    return "accepted"


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
