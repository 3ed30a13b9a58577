"""The proximal wrapper as its authors ran it: their lambda schedule and their window restart.

The oracle is a numpy float64 re-statement of TRSGD's update (``huiqu18/TRAlgorithm``): the
window position ``k`` restarts at every epoch, the anchor is the iterate at ``k = 0``, the
in-window step is ``lr_t / (k + 1)`` and the weight ``lam_t = lam * lr_0 / lr_t``, with ``lr_t``
the outer (scheduled) learning rate.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from sgdlab.optim import PROX_DEFAULTS, load_optimizer
from sgdlab.optim.proximal import Proximal

_RNG = np.random.default_rng(1)
A = _RNG.normal(size=(10, 3))
B = _RNG.normal(size=10)
THETA0 = np.array([0.4, -0.7, 1.5])
BATCHES = [np.array([t % 10, (3 * t + 1) % 10]) for t in range(14)]


def _grad(theta: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return A[rows].T @ (A[rows] @ theta - B[rows]) / len(rows)


def _trsgd(lr_at: Any, lam0: float, window: int, epoch: int | None, steps: int,
           momentum: float = 0.9) -> np.ndarray:
    theta, anchor, buf, k = THETA0.copy(), THETA0.copy(), None, 0
    for t in range(steps):
        if epoch is not None and t % epoch == 0:
            k = 0
        if k == 0:
            anchor = theta.copy()
        lr = lr_at(t)
        lam_t = lam0 * lr_at(0) / lr
        g = _grad(theta, BATCHES[t]) + 2 * lam_t * (theta - anchor)
        buf = g if buf is None else momentum * buf + g
        theta = theta - lr / (k + 1) * buf
        k = (k + 1) % window
    return theta


def _param() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(THETA0, dtype=torch.float64))


def _train(opt: torch.optim.Optimizer, w: torch.Tensor, steps: range, sched: Any = None,
           restart_at: tuple[int, ...] = ()) -> None:
    for t in steps:
        if t in restart_at:
            assert isinstance(opt, Proximal)
            opt.restart_window()
        opt.zero_grad()
        a, b = torch.as_tensor(A[BATCHES[t]]), torch.as_tensor(B[BATCHES[t]])
        (0.5 * ((a @ w - b) ** 2).mean()).backward()
        opt.step()
        if sched is not None:
            sched.step()


def _build(w: torch.nn.Parameter, epoch_steps: int | None) -> tuple[Proximal, Any]:
    opt = Proximal(torch.optim.SGD([w], lr=0.2, momentum=0.9), lam=0.1, window=4,
                   lam_schedule="authors", epoch_steps=epoch_steps)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.1)


@pytest.mark.parametrize("epoch_steps", [None, 6])
def test_authors_schedule_and_epoch_restart_match_trsgd(epoch_steps: int | None) -> None:
    w = _param()
    opt, sched = _build(w, epoch_steps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(opt, w, range(14), sched)
    expected = _trsgd(lambda t: 0.2 * 0.1 ** (t // 5), 0.1, 4, epoch_steps, 14)
    np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-12, atol=1e-14)
    # each knob moves the path: the running window, and a constant lambda, end elsewhere
    other = _trsgd(lambda t: 0.2 * 0.1 ** (t // 5), 0.1, 4, 6 if epoch_steps is None else None,
                   14)
    assert np.abs(expected - other).max() > 1e-6
    w2 = _param()
    constant = Proximal(torch.optim.SGD([w2], lr=0.2, momentum=0.9), lam=0.1, window=4,
                        epoch_steps=epoch_steps)
    _train(constant, w2, range(14), torch.optim.lr_scheduler.StepLR(constant, 5, gamma=0.1))
    assert np.abs(w2.detach().numpy() - expected).max() > 1e-6


def test_restart_window_is_the_epoch_restart_by_hand() -> None:
    by_hand, by_epoch = _param(), _param()
    opt, sched = _build(by_hand, None)
    _train(opt, by_hand, range(14), sched, restart_at=(6, 12))
    opt, sched = _build(by_epoch, 6)
    _train(opt, by_epoch, range(14), sched)
    assert torch.equal(by_hand, by_epoch)


@pytest.mark.parametrize(("schedule", "epoch_steps"), [("inverse_lr", None), ("authors", 3)])
def test_checkpoint_with_an_lr_scheduler_resumes_exactly(schedule: str,
                                                         epoch_steps: int | None) -> None:
    def build(params: list[torch.nn.Parameter]) -> tuple[Proximal, Any]:
        opt = Proximal(torch.optim.SGD(params, lr=0.3, momentum=0.9), lam=0.2, window=4,
                       lam_schedule=schedule, epoch_steps=epoch_steps)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

    straight = [_param()]
    opt, scheduler = build(straight)
    _train(opt, straight[0], range(10), scheduler)

    first = [_param()]
    opt, scheduler = build(first)
    _train(opt, first[0], range(5), scheduler, restart_at=(3,))
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(first[0].detach().clone())]
    opt, scheduler = build(resumed)
    opt.load_state_dict(saved["opt"])  # after the scheduler is built, as torch documents
    scheduler.load_state_dict(saved["sched"])
    _train(opt, resumed[0], range(5, 10), scheduler)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3 * 0.5**3)
    assert opt.param_groups[0]["prox_lr0"] == 0.3
    reference = [_param()]  # the same restart at step 3, without the checkpoint
    opt, scheduler = build(reference)
    _train(opt, reference[0], range(10), scheduler, restart_at=(3,))
    assert torch.equal(resumed[0], reference[0])
    # A restart at 3 moves the running window's path; with epochs of 3 steps it is one already.
    assert torch.equal(resumed[0], straight[0]) == (epoch_steps == 3)


def test_epoch_steps_must_match_to_load() -> None:
    opt, _ = _build(_param(), 6)
    other, _ = _build(_param(), None)
    with pytest.raises(ValueError, match=r"saved with epoch_steps=6, this optimizer has "
                                         r"epoch_steps=None"):
        other.load_state_dict(opt.state_dict())


def test_registry_prox_defaults_are_the_documented_ones() -> None:
    w = _param()
    opt = load_optimizer("prox-sgd", [w], lr=0.1)
    assert isinstance(opt, Proximal)
    assert opt.defaults["prox_lam"] == PROX_DEFAULTS["lam"]
    assert opt.window == PROX_DEFAULTS["window"]
    assert opt.lam_schedule == PROX_DEFAULTS.get("lam_schedule", "constant")


class _SGD(torch.optim.SGD):
    """A subclass: the wrapper does not fold the term into its weight decay (the two-pass path)."""


class _Adam(torch.optim.Adam):
    """As _SGD."""


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_term_folded_into_weight_decay_matches_the_two_pass_term(name: str, maximize: bool,
                                                                 foreach: bool,
                                                                 fused: bool) -> None:
    def build(params: list[torch.nn.Parameter], plain: bool) -> Proximal:
        if name == "sgd":
            cls: Any = _SGD if plain else torch.optim.SGD
            inner = cls(params, lr=0.05, momentum=0.9, weight_decay=0.01, maximize=maximize,
                        fused=fused)
        else:
            cls = _Adam if plain else torch.optim.Adam
            inner = cls(params, lr=0.01, weight_decay=0.01, maximize=maximize, fused=fused)
        return Proximal(inner, lam=0.3, window=4, foreach=foreach)

    folded, two_pass = [_param()], [_param()]
    opt, ref = build(folded, False), build(two_pass, True)
    seen: list[float] = []  # what the inner step reads: 0.01 + 2 lam inside a window
    opt.inner.register_step_pre_hook(
        lambda o, *_: seen.append(o.param_groups[0]["weight_decay"]))
    sign = -1.0 if maximize else 1.0
    for t in range(10):
        for o, w in ((opt, folded[0]), (ref, two_pass[0])):
            o.zero_grad()
            a, b = torch.as_tensor(A[BATCHES[t]]), torch.as_tensor(B[BATCHES[t]])
            (sign * 0.5 * ((a @ w - b) ** 2).mean()).backward()
            grad = w.grad.clone()  # type: ignore[union-attr]
            o.step()
            assert torch.equal(w.grad, grad)  # type: ignore[arg-type]  # the caller's, as it was
        assert opt.param_groups[0]["weight_decay"] == 0.01  # put back after every step
    assert seen == [0.01 if t % 4 == 0 else pytest.approx(0.01 + 0.6) for t in range(10)]
    np.testing.assert_allclose(folded[0].detach().numpy(), two_pass[0].detach().numpy(),
                               rtol=1e-12, atol=1e-14)
    assert np.abs(folded[0].detach().numpy() - THETA0).max() > 1e-3
