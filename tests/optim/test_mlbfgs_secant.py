"""mL-BFGS's ``secant="same-batch"`` pairs: y from two gradients of one batch."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
from mlbfgs_toys import backward, batches, mlp, newest_pair
from torch import Tensor

from sgdlab.optim.mlbfgs import MLBFGS, DirectionExchange

F64 = torch.float64
OPEN = dict(damping=(0.0, math.inf, 0.0), max_norm=None, update_freq=3)


def steps(opt: MLBFGS, model: torch.nn.Module, data: list[tuple[Tensor, Tensor]]) -> None:
    for batch in data:
        opt.step(functools.partial(backward, model, batch))


def noisy_quadratic(secant: str, steps: int = 10) -> tuple[Tensor, Tensor, MLBFGS]:
    """f_t(x) = x'Ax/2 + n_t'x with a fresh noise n_t each step (the step's "batch")."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, generator=g, dtype=F64)
    a = a @ a.T / 8 + 0.1 * torch.eye(8, dtype=F64)
    x = torch.nn.Parameter(torch.ones(8, dtype=F64))
    opt = MLBFGS([x], lr=0.1, secant=secant, **OPEN)
    for _ in range(steps):
        noise = torch.randn(8, generator=g, dtype=F64)

        def closure(noise: Tensor = noise) -> Tensor:
            opt.zero_grad()
            loss = 0.5 * x @ a @ x + noise @ x
            loss.backward()
            return loss

        opt.step(closure)
    return a, x, opt


def test_same_batch_pairs_are_exact_secants_where_averaged_ones_carry_the_noise() -> None:
    for secant, exact in (("same-batch", True), ("averaged", False)):
        a, x, opt = noisy_quadratic(secant)
        s, y = newest_pair(opt.state[x]["mlbfgs_block"])
        assert opt.diagnostics()["pairs_accepted"] == 3
        assert torch.allclose(y, a @ s, rtol=1e-12, atol=1e-14) == exact, secant


def test_parameters_and_grads_come_back_exactly_whatever_the_closure_does_to_grad() -> None:
    """Zeroing .grad in place or setting it to None: the same trajectory, and after each step
    .grad is the step's own gradient (the first evaluation), bit for bit."""
    def closure(model: torch.nn.Module, opt: MLBFGS, batch: tuple[Tensor, Tensor],
                set_to_none: bool) -> Tensor:
        opt.zero_grad(set_to_none=set_to_none)
        loss = ((model(batch[0]) - batch[1]) ** 2).mean()
        loss.backward()
        return loss

    runs = []
    for set_to_none in (True, False):
        model = mlp()
        opt = MLBFGS(model.parameters(), secant="same-batch", update_freq=2)
        for batch in batches(1, 7):
            twin = mlp()
            twin.load_state_dict(model.state_dict())
            backward(twin, batch)
            opt.step(functools.partial(closure, model, opt, batch, set_to_none))
            for p, q in zip(model.parameters(), twin.parameters(), strict=True):
                assert torch.equal(p.grad, q.grad)
        assert opt.diagnostics()["pairs_accepted"] == 3 * len(opt.blocks)  # steps 3, 5, 7
        runs.append([p.detach().clone() for p in model.parameters()])
    for p, q in zip(*runs, strict=True):
        assert torch.equal(p, q)


def test_a_closure_that_raises_at_the_second_evaluation_leaves_parameters_and_grads() -> None:
    """Bit for bit: the parameters are copied back, not moved forward by s again (here
    x - s + s rounds away from x in one element)."""
    x = torch.nn.Parameter(torch.tensor([0.1, 0.7, -0.3, 1e-3, 5.0], dtype=F64))
    target = torch.tensor([2.9, -1.3, 0.77, 3.1, -0.6], dtype=F64)
    opt = MLBFGS([x], lr=1.0, momentum=0.0, beta_param=0.9, beta_grad=0.9, update_freq=1,
                 max_norm=None, damping=(0.0, math.inf, 0.0), secant="same-batch")
    calls: list[int] = []

    def closure(fail: bool = False) -> Tensor:
        calls.append(1)
        if fail and len(calls) == 2:
            x.grad = None
            raise FloatingPointError("the second evaluation failed")
        opt.zero_grad()
        loss = ((x - target) ** 2 * torch.arange(1, 6, dtype=F64)).sum()
        loss.backward()
        return loss

    opt.step(closure)  # x - g: the pair step 2 moves by element-wise operations alone
    calls.clear()
    before = x.detach().clone()
    with pytest.raises(FloatingPointError, match="second evaluation"):
        opt.step(functools.partial(closure, fail=True))
    assert torch.equal(x, before)
    assert torch.equal(x.grad, 2 * (before - target) * torch.arange(1, 6, dtype=F64))


def test_a_checkpoint_from_before_the_option_loads_as_averaged() -> None:
    model = mlp()
    opt = MLBFGS(model.parameters(), update_freq=2)
    steps(opt, model, batches(4, 3))
    old = opt.state_dict()
    for group in old["param_groups"]:
        del group["secant"]
    other = MLBFGS(model.parameters(), update_freq=2)
    other.load_state_dict(old)
    assert other.param_groups[0]["secant"] == "averaged"


class _Exchange(DirectionExchange):
    rank, world_size = 0, 2

    def gather_directions(self, local: dict[int, Tensor], owners: list[int]) -> dict[int, Tensor]:
        raise AssertionError("not reached")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(secant="exact"), r"Invalid secant: 'exact' \(one of averaged, same-batch\)"),
        (dict(secant="same-batch", variant="authors"), r"option of variant='ours'"),
        (dict(secant="same-batch", exchange=_Exchange()), r"use secant='averaged' with an"),
    ],
)
def test_bad_secant_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MLBFGS(mlp().parameters(), **kwargs)


def test_a_step_without_closure_is_refused_from_the_first_step() -> None:
    model = mlp()
    opt = MLBFGS(model.parameters(), secant="same-batch")
    backward(model, batches(5, 1)[0])
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
