"""The small float64 regression problem the mL-BFGS tests share: a tanh MLP, its batches, one
backward pass, and the newest pair of a block's history (imported by the test files;
``conftest.py`` puts this folder on the path)."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor

F64 = torch.float64


def mlp(seed: int = 0, widths: tuple[int, ...] = (5, 7, 6, 3)) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1]).to(F64)


def batches(seed: int, steps: int, n: int = 16, d: int = 5) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn(n, d, generator=g, dtype=F64)
        out.append((x, torch.stack([x[:, 0] * x[:, 1], torch.sin(x[:, 2]), x[:, 3]], 1)))
    return out


def backward(model: torch.nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    for p in model.parameters():
        p.grad = None
    loss = ((model(batch[0]) - batch[1]) ** 2).mean()
    loss.backward()
    return loss


def newest_pair(block: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The newest kept pair of a block's ring buffer."""
    m = block["valid"].numel()
    k = int(block["head"] - 1) % m
    return block["pairs"][k], block["pairs"][m + k]
