"""The conformance table: every optimizer sgdlab offers goes through the same checks.

1. the loss falls on a small logistic-regression problem;
2. a state_dict saved mid-run (through ``torch.save``/``torch.load(weights_only=True)``) and
   loaded into a fresh optimizer continues identically, bit for bit;
3. it works under a torch LR scheduler (the scheduler's lr reaches the update);
4. bad hyperparameters raise ``ValueError`` with a clear message.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from sgdlab.optim import load_optimizer
from sgdlab.optim.registry import peers_available


@dataclass(frozen=True)
class Case:
    name: str
    hparams: dict[str, Any]
    bad: dict[str, Any]
    message: str
    marks: tuple[Any, ...] = field(default=())

    def param(self) -> Any:
        label = self.name + "".join(f"-{k}{v}" for k, v in self.hparams.items() if k != "lr")
        return pytest.param(self, id=label, marks=self.marks)


_no_peers = pytest.mark.skipif(not peers_available(), reason="peers extra not installed")

CASES = [
    Case("sgd", {"lr": 0.5}, {"lr": -1.0}, r"Invalid learning rate: -1"),
    Case(
        "sgd",
        {"lr": 0.2, "momentum": 0.9, "nesterov": True},
        {"lr": 0.1, "momentum": -0.5},
        r"Invalid momentum value: -0.5",
    ),
    Case("adam", {"lr": 0.05}, {"lr": 0.1, "betas": (1.5, 0.9)}, r"Invalid beta parameter"),
    Case(
        "adamw",
        {"lr": 0.05, "weight_decay": 0.01},
        {"lr": 0.1, "eps": -1.0},
        r"Invalid epsilon value",
    ),
    Case(
        "lbfgs",
        {"lr": 0.5, "max_iter": 4, "line_search_fn": "strong_wolfe"},
        {"lr": -0.5},
        r"Invalid learning rate",
    ),
    Case(
        "mlbfgs",
        {"lr": 0.1, "update_freq": 3},
        {"lr": 0.1, "history_size": 0},
        r"Invalid history_size: 0",
    ),
    Case(
        "mlbfgs",
        {"lr": 0.1, "update_freq": 2, "weight_decay": 1e-3, "blocks": "size:3"},
        {"lr": -0.1},
        r"Invalid lr: -0.1",
    ),
    Case(
        "clip-sgd",
        {"lr": 0.2, "max_norm": 0.5, "weight_decay": 1e-3},
        {"lr": 0.1, "max_norm": 0.0},
        r"Invalid max_norm: 0",
    ),
    Case(
        "prox-sgd",
        {"lr": 0.2, "lam": 0.01, "window": 3},
        {"lr": 0.1, "lam": -1.0},
        r"Invalid lam: -1",
    ),
    Case(
        "prox-adam",
        {"lr": 0.05, "lam": 0.01, "window": 4},
        {"lr": 0.1, "window": 0},
        r"Invalid window: 0",
    ),
    Case(
        "prox:adamw",
        {"lr": 0.05, "lam": 0.01, "coupled": False},
        {"lr": 0.1, "inner_decay": "x"},
        r"Invalid inner_decay: 'x'",
    ),
    Case("peer:lion", {"lr": 0.01}, {"lr": -1.0}, r"lr|learning", (_no_peers,)),
]


def _problem() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 5, generator=g, dtype=torch.float64)
    w = torch.randn(5, generator=g, dtype=torch.float64)
    y = (x @ w + 0.3 * torch.randn(128, generator=g, dtype=torch.float64) > 0).double()
    return x, y


def _model() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(5, 1).double()


def _run(
    model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0
) -> list[float]:
    x, y = _problem()
    losses = []
    for t in range(start, start + steps):
        idx = torch.arange(t * 16, t * 16 + 16) % len(y)

        def closure(idx: torch.Tensor = idx) -> torch.Tensor:
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(x[idx]).squeeze(1), y[idx])
            loss.backward()
            return loss

        losses.append(float(torch.as_tensor(opt.step(closure)).detach()))
    return losses


def _full_loss(model: torch.nn.Module) -> float:
    x, y = _problem()
    with torch.no_grad():
        return float(F.binary_cross_entropy_with_logits(model(x).squeeze(1), y))


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_loss_falls(case: Case) -> None:
    model = _model()
    before = _full_loss(model)
    opt = load_optimizer(case.name, model.parameters(), **case.hparams)
    losses = _run(model, opt, 40)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert _full_loss(model) < 0.8 * before


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_state_dict_round_trip_continues_identically(case: Case) -> None:
    model = _model()
    opt = load_optimizer(case.name, model.parameters(), **case.hparams)
    _run(model, opt, 7)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)

    twin = copy.deepcopy(model)  # the uninterrupted run goes on with the original
    losses = _run(model, opt, 9, start=7)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin.load_state_dict(saved["model"])
    twin_opt = load_optimizer(case.name, twin.parameters(), **case.hparams)
    twin_opt.load_state_dict(saved["opt"])
    twin_losses = _run(twin, twin_opt, 9, start=7)

    assert twin_losses == losses
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_works_under_an_lr_scheduler(case: Case) -> None:
    scheduled, by_hand, unscheduled = _model(), _model(), _model()
    opts = [
        load_optimizer(case.name, m.parameters(), **case.hparams)
        for m in (scheduled, by_hand, unscheduled)
    ]
    sched = torch.optim.lr_scheduler.StepLR(opts[0], step_size=1, gamma=0.25)
    for model, opt in zip((scheduled, by_hand, unscheduled), opts, strict=True):
        _run(model, opt, 2)
    sched.step()
    for group in opts[1].param_groups:
        group["lr"] *= 0.25
    assert opts[0].param_groups[0]["lr"] == pytest.approx(0.25 * case.hparams["lr"])
    for model, opt in zip((scheduled, by_hand, unscheduled), opts, strict=True):
        _run(model, opt, 3, start=2)
    for a, b in zip(scheduled.parameters(), by_hand.parameters(), strict=True):
        assert torch.equal(a, b)  # the scheduler's lr is the lr the update used
    assert any(
        not torch.equal(a, b)
        for a, b in zip(scheduled.parameters(), unscheduled.parameters(), strict=True)
    )


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_hyperparameters_raise_clearly(case: Case) -> None:
    with pytest.raises(ValueError, match=case.message):
        load_optimizer(case.name, _model().parameters(), **case.bad)
