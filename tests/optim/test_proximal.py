"""Tests of the proximal wrapper against closed-form updates and hand-rolled oracles.

The oracles are written from the update rule in the module docstring, not from the wrapper:
numpy float64 recursions for SGD (momentum) and Adam, and, for any other inner optimizer, a
bare copy of that optimizer driven by a loop that adds the proximal term and scales the
learning rate by hand.
"""

from __future__ import annotations

import copy
import io
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from sgdlab.errors import ConfigError
from sgdlab.optim.proximal import Proximal
from sgdlab.optim.proximal_factory import make_proximal

# A small least-squares problem f(w, c) = 1/(2|B|) sum_{i in B} (a_i . w + c - b_i)^2 with
# batches of 2 rows: noisy gradients, and an exact gradient to write oracles with.
_RNG = np.random.default_rng(0)
A = _RNG.normal(size=(12, 3))
B = _RNG.normal(size=12)
BATCHES = [np.array([(2 * t) % 12, (2 * t + 5) % 12]) for t in range(11)]
THETA0 = np.array([0.5, -1.0, 2.0, 0.3])  # w (3), then c (1)


def _grad(theta: np.ndarray, rows: np.ndarray) -> np.ndarray:
    features = np.hstack([A[rows], np.ones((len(rows), 1))])
    return features.T @ (features @ theta - B[rows]) / len(rows)


def _params(dtype: torch.dtype = torch.float64) -> list[torch.nn.Parameter]:
    theta = torch.tensor(THETA0, dtype=dtype)
    return [torch.nn.Parameter(theta[:3].clone()), torch.nn.Parameter(theta[3:].clone())]


def _loss(params: list[torch.nn.Parameter], rows: np.ndarray) -> torch.Tensor:
    w, c = params
    a = torch.as_tensor(A[rows], dtype=w.dtype)
    b = torch.as_tensor(B[rows], dtype=w.dtype)
    return 0.5 * ((a @ w + c - b) ** 2).mean()


def _theta(params: list[torch.nn.Parameter]) -> np.ndarray:
    return torch.cat([p.detach() for p in params]).numpy()


def _train(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: range,
           scheduler: Any = None) -> None:
    for t in steps:
        opt.zero_grad()
        _loss(params, BATCHES[t]).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _sgd_oracle(lr_at: Callable[[int], float], lam: float, window: int, *, momentum: float,
                harmonic: bool, coupled: bool, inverse_lr: bool, steps: int) -> np.ndarray:
    """theta <- theta - eta_k (buf), buf = mu buf + g + 2 lam_t (theta - anchor)  (coupled)."""
    theta, buf, anchor = THETA0.copy(), None, THETA0.copy()
    for t in range(steps):
        k = t % window
        if k == 0:
            anchor = theta.copy()
        lr = lr_at(t)
        lam_t = lam / lr if inverse_lr else lam
        eta = lr / (k + 1) if harmonic else lr
        g = _grad(theta, BATCHES[t])
        if coupled:
            g = g + 2 * lam_t * (theta - anchor)
        buf = g if buf is None else momentum * buf + g
        theta = theta - eta * (buf if momentum else g)
        if not coupled:
            theta = theta - eta * 2 * lam_t * (theta - anchor)
    return theta


@pytest.mark.parametrize("harmonic", [True, False])
@pytest.mark.parametrize("coupled", [True, False])
def test_sgd_matches_closed_form_across_windows(harmonic: bool, coupled: bool) -> None:
    momentum = 0.9 if coupled else 0.0
    params = _params()
    inner = torch.optim.SGD(params, lr=0.2, momentum=momentum)
    opt = Proximal(inner, lam=0.3, window=3, coupled=coupled,
                   inner_decay="harmonic" if harmonic else "none")
    _train(opt, params, range(8))  # windows [0, 3), [3, 6), [6, 8)
    expected = _sgd_oracle(lambda t: 0.2, 0.3, 3, momentum=momentum, harmonic=harmonic,
                           coupled=coupled, inverse_lr=False, steps=8)
    np.testing.assert_allclose(_theta(params), expected, rtol=1e-12, atol=1e-14)
    # the term changes the path: plain SGD ends elsewhere
    plain = _sgd_oracle(lambda t: 0.2, 0.0, 3, momentum=momentum, harmonic=harmonic,
                        coupled=coupled, inverse_lr=False, steps=8)
    assert np.abs(expected - plain).max() > 1e-3


def test_inverse_lr_schedule_under_an_lr_scheduler() -> None:
    params = _params()
    opt = Proximal(torch.optim.SGD(params, lr=0.4), lam=0.05, window=4, lam_schedule="inverse_lr")
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        _train(opt, params, range(10), scheduler)
    expected = _sgd_oracle(lambda t: 0.4 * 0.5 ** (t // 3), 0.05, 4, momentum=0.0, harmonic=True,
                           coupled=True, inverse_lr=True, steps=10)
    np.testing.assert_allclose(_theta(params), expected, rtol=1e-12, atol=1e-14)
    # the in-window decay was undone after every step: the scheduler's value stands
    assert opt.inner.param_groups[0]["lr"] == scheduler.get_last_lr()[0] == 0.4 * 0.5**3


def _adam_oracle(lr: float, lam: float, window: int, steps: int,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> np.ndarray:
    theta, anchor = THETA0.copy(), THETA0.copy()
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    for t in range(steps):
        k = t % window
        if k == 0:
            anchor = theta.copy()
        g = _grad(theta, BATCHES[t]) + 2 * lam * (theta - anchor)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** (t + 1)), v / (1 - betas[1] ** (t + 1))
        theta = theta - lr / (k + 1) * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def test_coupled_adam_matches_closed_form() -> None:
    params = _params()
    opt = Proximal(torch.optim.Adam(params, lr=0.05), lam=2.0, window=4)
    _train(opt, params, range(10))
    np.testing.assert_allclose(_theta(params), _adam_oracle(0.05, 2.0, 4, 10), rtol=1e-10)


def _manual_proximal(factory: Callable[..., torch.optim.Optimizer], lam: float, window: int,
                     coupled: bool, steps: int) -> np.ndarray:
    """The method by hand around a bare inner optimizer: the spec, independent of the wrapper."""
    params = _params()
    inner = factory(params)
    anchors = [p.detach().clone() for p in params]
    for t in range(steps):
        k = t % window
        if k == 0:
            anchors = [p.detach().clone() for p in params]
        inner.zero_grad()
        _loss(params, BATCHES[t]).backward()
        lrs = [group["lr"] for group in inner.param_groups]
        for group, lr in zip(inner.param_groups, lrs, strict=True):
            group["lr"] = lr / (k + 1)
        if coupled:
            for p, a in zip(params, anchors, strict=True):
                assert p.grad is not None
                p.grad = p.grad + 2 * lam * (p.detach() - a)
        inner.step()
        if not coupled:
            with torch.no_grad():
                for p, a in zip(params, anchors, strict=True):
                    p.sub_(lrs[0] / (k + 1) * 2 * lam * (p - a))
        for group, lr in zip(inner.param_groups, lrs, strict=True):
            group["lr"] = lr
    return _theta(params)


INNERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, nesterov=True,
                                                 weight_decay=0.01),
    "adam": lambda p: torch.optim.Adam(p, lr=0.03),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.03, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5),
}


@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "decoupled"])
@pytest.mark.parametrize("name", list(INNERS))
def test_any_inner_matches_the_method_by_hand(name: str, coupled: bool) -> None:
    params = _params()
    opt = Proximal(INNERS[name](params), lam=0.7, window=3, coupled=coupled)
    _train(opt, params, range(9))
    expected = _manual_proximal(INNERS[name], 0.7, 3, coupled, 9)
    np.testing.assert_allclose(_theta(params), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["sgd-nesterov-wd", "adam"])
def test_lam_zero_without_decay_is_the_inner_optimizer(name: str) -> None:
    wrapped, bare = _params(), _params()
    opt = Proximal(INNERS[name](wrapped), lam=0.0, window=3, inner_decay="none")
    reference = INNERS[name](bare)
    _train(opt, wrapped, range(7))
    _train(reference, bare, range(7))
    for p, q in zip(wrapped, bare, strict=True):
        assert torch.equal(p, q)
        for key, value in reference.state[q].items():
            assert torch.equal(torch.as_tensor(opt.inner.state[p][key]), torch.as_tensor(value))


def _roundtrip(state_dict: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(("name", "coupled"), [("sgd-nesterov-wd", True), ("adam", False)])
@pytest.mark.parametrize("stop", [5, 6])  # window 4: positions 1 and 2 of the second window
def test_checkpoint_mid_window_resumes_exactly(name: str, coupled: bool, stop: int) -> None:
    def build(params: list[torch.nn.Parameter]) -> Proximal:
        return Proximal(INNERS[name](params), lam=0.4, window=4, coupled=coupled,
                        lam_schedule="inverse_lr")

    straight = _params()
    opt = build(straight)
    _train(opt, straight, range(11))

    first = _params()
    opt = build(first)
    _train(opt, first, range(stop))
    saved = _roundtrip(opt.state_dict())
    assert saved["state"][0]["window_pos"] == stop % 4
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    fresh = build(resumed)
    fresh.load_state_dict(saved)
    assert fresh.param_groups is fresh.inner.param_groups
    _train(fresh, resumed, range(stop, 11))
    for p, q in zip(resumed, straight, strict=True):
        assert torch.equal(p, q)


def test_state_dict_loads_only_into_a_matching_wrapper() -> None:
    params = _params()
    opt = Proximal(torch.optim.SGD(params, lr=0.1), lam=0.1, window=4)
    _train(opt, params, range(2))
    saved = opt.state_dict()
    other = Proximal(torch.optim.SGD(_params(), lr=0.1), lam=0.1, window=5)
    with pytest.raises(ValueError, match=r"saved with window=4, this optimizer has window=5"):
        other.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"Not a Proximal state_dict: missing \['config'"):
        other.load_state_dict(opt.inner.state_dict())


@pytest.mark.parametrize("coupled", [True, False])
def test_foreach_matches_the_per_tensor_loop(coupled: bool) -> None:
    def run(foreach: bool) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(1)
        weights = [torch.nn.Parameter(torch.randn(5, 4, generator=gen, dtype=torch.float64)),
                   torch.nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64))]
        unused = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=torch.float64))
        head = torch.nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64))
        inner = torch.optim.SGD([{"params": weights + [unused]}, {"params": [head]}],
                                lr=0.05, momentum=0.9)
        opt = Proximal(inner, lam=0.3, window=4, coupled=coupled, lam_schedule="inverse_lr",
                       foreach=foreach)
        opt.param_groups[1]["prox_lam"] = 0.02  # a group may carry its own weight
        x = torch.randn(16, 5, generator=gen, dtype=torch.float64)
        for t in range(10):
            opt.zero_grad()
            rows = x[t % 4 * 4:(t % 4 + 1) * 4]
            (torch.tanh(rows @ weights[0] + weights[1]) @ head).pow(2).mean().backward()
            opt.step()
        return [p.detach() for p in [*weights, unused, head]]

    for fast, loop in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(fast, loop, rtol=1e-14, atol=1e-15)


def test_param_groups_are_the_inner_ones() -> None:
    params = _params()
    opt = Proximal(torch.optim.Adam(params[:1], lr=0.1), lam=0.25)
    assert opt.param_groups is opt.inner.param_groups
    opt.add_param_group({"params": params[1:], "lr": 0.01})
    assert len(opt.inner.param_groups) == 2
    assert opt.inner.param_groups[1]["prox_lam"] == 0.25
    assert opt.inner.param_groups[1]["betas"] == (0.9, 0.999)  # the inner's defaults
    _loss(params, BATCHES[0]).backward()
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_coupled_step_leaves_the_callers_gradients_alone() -> None:
    params = _params()
    opt = Proximal(torch.optim.SGD(params, lr=0.1), lam=1.0, window=5)
    _train(opt, params, range(2))  # now mid-window, where the term is non-zero
    opt.zero_grad()
    _loss(params, BATCHES[2]).backward()
    grads = [torch.clone(p.grad) for p in params if p.grad is not None]
    opt.step()
    assert len(grads) == 2
    for p, g in zip(params, grads, strict=True):
        assert p.grad is not None and torch.equal(p.grad, g)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_closure_returns_the_loss_and_follows_the_same_path(set_to_none: bool) -> None:
    with_closure, without = _params(), _params()
    opt = Proximal(torch.optim.SGD(with_closure, lr=0.2, momentum=0.5), lam=0.3, window=3)
    reference = Proximal(torch.optim.SGD(without, lr=0.2, momentum=0.5), lam=0.3, window=3)
    for t in range(7):
        def closure(rows: np.ndarray = BATCHES[t]) -> torch.Tensor:
            opt.zero_grad(set_to_none=set_to_none)  # False: zeroes the tensors in place
            loss = _loss(with_closure, rows)
            loss.backward()
            return loss

        before = _loss(with_closure, BATCHES[t]).item()
        assert opt.step(closure).item() == pytest.approx(before, rel=1e-15)
        _train(reference, without, range(t, t + 1))
    for p, q in zip(with_closure, without, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("inner", ["adam", "rmsprop"])
def test_one_evaluation_inner_skips_the_penalty_under_a_closure(
    inner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_closure, without = _params(), _params()
    opt = make_proximal(inner, with_closure, lam=0.3, window=3, lr=0.05)
    reference = make_proximal(inner, without, lam=0.3, window=3, lr=0.05)
    # Only a line search reads the penalised loss; these optimizers must not pay for it.
    monkeypatch.setattr(Proximal, "_penalty", lambda self, lams: pytest.fail("penalty computed"))
    for t in range(7):
        def closure(rows: np.ndarray = BATCHES[t]) -> torch.Tensor:
            opt.zero_grad()
            loss = _loss(with_closure, rows)
            loss.backward()
            return loss

        before = _loss(with_closure, BATCHES[t]).item()
        assert opt.step(closure).item() == before
        _train(reference, without, range(t, t + 1))
    for p, q in zip(with_closure, without, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_lbfgs_inner_solves_each_proximal_problem(set_to_none: bool) -> None:
    """Window 1 and an inner solver that converges: the proximal point method, exactly.

    For f = 1/2 theta'H theta - r'theta + const, the window's solution is
    argmin f + lam |theta - anchor|^2 = (H + 2 lam I)^-1 (r + 2 lam anchor).
    """
    params = _params()
    inner = torch.optim.LBFGS(params, lr=1.0, max_iter=100, line_search_fn="strong_wolfe",
                              tolerance_grad=1e-13, tolerance_change=1e-15)
    opt = Proximal(inner, lam=0.5, window=1)
    rows = np.arange(12)
    features = np.hstack([A, np.ones((12, 1))])
    hessian, r = features.T @ features / 12, features.T @ B / 12
    theta = THETA0.copy()
    for _ in range(3):
        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=set_to_none)
            loss = _loss(params, rows)
            loss.backward()
            return loss

        opt.step(closure)
        theta = np.linalg.solve(hessian + 2 * 0.5 * np.eye(4), r + 2 * 0.5 * theta)
        np.testing.assert_allclose(_theta(params), theta, rtol=1e-7, atol=1e-9)
    minimiser = np.linalg.solve(hessian, r)
    assert np.abs(theta - minimiser).max() > 1e-2  # three proximal steps do not reach it


@pytest.mark.parametrize(
    ("inner", "coupled", "hparams"),
    [("sgd", True, {"lr": 0.05}), ("adam", True, {"lr": 0.05}), ("adam", False, {"lr": 0.05})],
)
def test_loss_falls_on_small_batch_logistic_regression(inner: str, coupled: bool,
                                                       hparams: dict[str, Any]) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(256, 10, generator=gen)
    y = (x @ torch.randn(10, generator=gen) + 0.3 * torch.randn(256, generator=gen) > 0).float()
    model = torch.nn.Linear(10, 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = make_proximal(inner, model.parameters(), lam=0.05, window=10, coupled=coupled,
                        **hparams)

    def full_loss() -> float:
        with torch.no_grad():
            logits = model(x).squeeze(1)
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, y).item()

    start = full_loss()
    for _ in range(200):
        rows = torch.randint(0, 256, (4,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(
            model(x[rows]).squeeze(1), y[rows]).backward()
        opt.step()
    assert full_loss() < 0.6 * start


def test_deepcopy_keeps_the_groups_shared() -> None:
    params = _params()
    opt = Proximal(torch.optim.SGD(params, lr=0.1), lam=0.1, window=3)
    _train(opt, params, range(2))
    twin = copy.deepcopy(opt)
    assert twin.param_groups is twin.inner.param_groups
    assert twin.state_dict()["state"][0]["window_pos"] == 2


def test_make_proximal_builds_named_and_factory_inners() -> None:
    opt = make_proximal("SGD", _params(), lam=0.1, lr=0.1)
    assert opt.param_groups[0]["momentum"] == 0.9
    assert make_proximal("sgd", _params(), lam=0.1, lr=0.1, momentum=0.0).param_groups[0][
        "momentum"] == 0.0
    opt = make_proximal(torch.optim.RMSprop, _params(), lam=0.1, window=7, lr=0.01, alpha=0.9)
    assert isinstance(opt.inner, torch.optim.RMSprop) and opt.window == 7
    assert opt.param_groups[0]["alpha"] == 0.9
    with pytest.raises(ConfigError, match=r"Unknown inner optimizer 'lion' \(built in: 'sgd'"):
        make_proximal("lion", _params(), lam=0.1)


def _sgd() -> torch.optim.Optimizer:
    return torch.optim.SGD(_params(), lr=0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": -1}, "Invalid lam: -1"),
        ({"lam": float("nan")}, "Invalid lam: nan"),
        ({"lam": 0.1, "window": 0}, "Invalid window: 0"),
        ({"lam": 0.1, "window": 2.5}, "Invalid window: 2.5"),
        ({"lam": 0.1, "window": True}, "Invalid window: True"),
        ({"lam": 0.1, "inner_decay": "cosine"},
         "Invalid inner_decay: 'cosine' (allowed: 'harmonic', 'none')"),
        ({"lam": 0.1, "lam_schedule": "linear"},
         "Invalid lam_schedule: 'linear' (allowed: 'constant', 'inverse_lr', 'authors')"),
        ({"lam": 0.1, "coupled": "yes"}, "Invalid coupled: 'yes'"),
        ({"lam": 0.1, "foreach": 1}, "Invalid foreach: 1"),
        ({"lam": 0.1, "epoch_steps": 0}, "Invalid epoch_steps: 0 (an integer >= 1, or None)"),
    ],
)
def test_bad_hyperparameters_raise(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Proximal(_sgd(), **kwargs)


def test_overshooting_pull_warns() -> None:
    with pytest.warns(UserWarning, match=r"lr \* 2 \* lam_t = 1.2 at its largest, overshoots"):
        Proximal(torch.optim.SGD(_params(), lr=0.3), lam=2.0, coupled=False)
    with pytest.warns(UserWarning, match=r"= 1 at its largest"):
        Proximal(torch.optim.SGD(_params(), lr=0.3), lam=0.5, lam_schedule="inverse_lr",
                 inner_decay="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Proximal(torch.optim.SGD(_params(), lr=0.3), lam=2.0, window=1)  # the term never acts
        Proximal(torch.optim.Adam(_params(), lr=0.3), lam=2.0)  # Adam rescales the term


def test_parameter_added_mid_window_is_anchored_where_it_stands() -> None:
    params = _params()
    opt = Proximal(torch.optim.SGD(params[:1], lr=0.1), lam=0.5, window=4, inner_decay="none")
    late = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    anchor = late.detach().clone()
    for t in range(6):
        if t == 2:
            opt.add_param_group({"params": [late]})
        if t in (2, 4):  # first step of `late`, first step of the second window
            anchor = late.detach().clone()
        opt.zero_grad()
        late.grad = None  # not yet in the optimizer at t < 2
        (_loss(params, BATCHES[t]) + (late**2).sum()).backward()
        before = late.detach().clone()
        opt.step()
        if t < 2:
            assert torch.equal(late.detach(), before)
            continue
        # SGD on |late|^2 plus the pull toward where `late` stood at its anchoring
        expected = before - 0.1 * (2 * before + 2 * 0.5 * (before - anchor))
        torch.testing.assert_close(late.detach(), expected, rtol=1e-15, atol=1e-17)
        assert torch.equal(opt.state[late]["anchor"], anchor)


def test_bad_inputs_raise() -> None:
    with pytest.raises(TypeError, match=r"Invalid inner: expected a torch.optim.Optimizer"):
        Proximal(_params(), lam=0.1)
    opt = Proximal(_sgd(), lam=0.1)
    with pytest.raises(ValueError, match=r"Invalid lam: -2"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "prox_lam": -2})
    embedding = torch.nn.Embedding(5, 2, sparse=True)
    opt = Proximal(torch.optim.SGD(embedding.parameters(), lr=0.1), lam=0.1, window=3)
    with pytest.raises(RuntimeError, match=r"does not support sparse gradients"):
        for _ in range(2):
            opt.zero_grad()
            embedding(torch.tensor([1, 3])).sum().backward()
            opt.step()
