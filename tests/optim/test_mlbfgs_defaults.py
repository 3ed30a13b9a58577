"""mL-BFGS out of the box (issue S5): the defaults train as well as SGD with momentum on small
mini-batch problems."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from sgdlab.optim.mlbfgs import MLBFGSConfig


def cross_entropy_with_logits(z: Tensor, y: Tensor) -> Tensor:
    # log(1 + e^z) - y z, the binary cross-entropy; torch's fused kernel is ~100 times slower
    # on small batches when it spreads over threads of a busy machine.
    return (torch.nn.functional.softplus(z) - y * z).mean()


# -- works out of the box ------------------------------------------------------------------------


def _train(kind: str, make: Callable, seed: int, steps: int = 200) -> float:
    g = torch.Generator().manual_seed(seed)
    if kind == "logistic":
        x = torch.randn(512, 20, generator=g) * torch.linspace(0.2, 3.0, 20)
        t = torch.sigmoid(x @ torch.randn(20, generator=g)) > torch.rand(512, generator=g)
        torch.manual_seed(seed)
        model: torch.nn.Module = torch.nn.Linear(20, 1)

        def loss_fn(xb: Tensor, tb: Tensor) -> Tensor:
            return cross_entropy_with_logits(model(xb).squeeze(1), tb.float())
    else:
        x = torch.randn(512, 10, generator=g)
        t = torch.sin(x[:, :3].sum(1)) + 0.5 * x[:, 3] * x[:, 4]
        torch.manual_seed(seed)
        model = torch.nn.Sequential(
            torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
        )

        def loss_fn(xb: Tensor, tb: Tensor) -> Tensor:
            return ((model(xb).squeeze(1) - tb) ** 2).mean()

    opt = make(model.parameters())
    for _ in range(steps):
        idx = torch.randint(0, 512, (32,), generator=g)
        opt.zero_grad()
        loss_fn(x[idx], t[idx]).backward()
        opt.step()
    with torch.no_grad():
        return float(loss_fn(x, t))


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_defaults_train_as_well_as_momentum_sgd(kind: str) -> None:
    # The final mini-batch iterate is noisy: compare the mean over seeds, and each seed
    # against the loss it started from.
    ours, sgd = [], []
    for seed in range(3):
        start = _train(kind, lambda p: torch.optim.SGD(p, lr=0.0), seed, steps=1)
        ours.append(_train(kind, lambda p: MLBFGSConfig().build(p), seed))
        sgd.append(_train(kind, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), seed))
        assert ours[-1] < 0.5 * start
    assert sum(ours) <= 1.05 * sum(sgd), (ours, sgd)
