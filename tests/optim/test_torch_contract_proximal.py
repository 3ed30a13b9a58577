"""What the torch contract found in the proximal wrapper, one test per defect (issue 12).

* its ``state_dict()`` has torch's top-level ``param_groups``, and they rule on loading;
* it keeps state entries not keyed by a parameter, as ``torch.optim`` does;
* one ``step()`` fires the global step hooks once (the inner step is not a second user step);
  the inner optimizer's own hooks still see each of its steps, once;
* coupled mode refuses a sparse gradient at every step of a window, the first included;
* with a maximizing inner optimizer the coupled term still pulls toward the anchor:
  maximizing ``f`` is minimizing ``-f``, bit for bit.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from sgdlab.optim import MLBFGS, Proximal, make_proximal

X = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.1], [2.0, 0.1, 0.4]], dtype=torch.float64)
Y = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)


def _params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.tensor([0.3, -0.7, 1.2], dtype=torch.float64)),
            nn.Parameter(torch.tensor([0.1], dtype=torch.float64))]


def _loss(params: list[Tensor], t: int, sign: float = 1.0) -> Tensor:
    w, c = params
    row = t % 3
    return sign * ((X[row] @ w + c - Y[row]) ** 2 + 0.1 * (w**4).sum())


def _train(opt: torch.optim.Optimizer, params: list[Tensor], steps: range,
           sign: float = 1.0) -> None:
    for t in steps:
        opt.zero_grad()
        _loss(params, t, sign).backward()
        opt.step()


def _through_disk(state_dict: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_has_torchs_top_level_param_groups() -> None:
    params = _params()
    opt = make_proximal("adam", params, lam=0.2, window=4, lr=0.05)
    _train(opt, params, range(6))
    state_dict = opt.state_dict()
    assert list(state_dict)[:2] == ["state", "param_groups"]
    assert state_dict["param_groups"] == opt.inner.state_dict()["param_groups"]
    assert state_dict["param_groups"][0]["params"] == [0, 1]
    assert state_dict["param_groups"] is state_dict["inner"]["param_groups"]  # stored once

    # Tooling edits the top-level groups (torch's format) and the edit is what loads.
    saved = _through_disk(state_dict)
    saved["param_groups"] = [{**g, "lr": 0.01} for g in saved["param_groups"]]
    fresh = make_proximal("adam", _params(), lam=0.2, window=4, lr=0.05)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["lr"] == 0.01 and fresh.param_groups is fresh.inner.param_groups


def test_checkpoint_without_top_level_groups_still_resumes_exactly() -> None:
    """A checkpoint written before the groups moved to the top loads as before."""
    straight = _params()
    opt = make_proximal("sgd", straight, lam=0.3, window=4, lr=0.05)
    _train(opt, straight, range(11))

    first = _params()
    opt = make_proximal("sgd", first, lam=0.3, window=4, lr=0.05)
    _train(opt, first, range(6))
    older = _through_disk(opt.state_dict())
    del older["param_groups"]
    resumed = [nn.Parameter(p.detach().clone()) for p in first]
    fresh = make_proximal("sgd", resumed, lam=0.3, window=4, lr=0.05)
    fresh.load_state_dict(older)
    _train(fresh, resumed, range(6, 11))
    for p, q in zip(resumed, straight, strict=True):
        assert torch.equal(p, q)


def test_state_entries_not_keyed_by_a_parameter_survive_a_round_trip() -> None:
    params = _params()
    opt = make_proximal("sgd", params, lam=0.3, window=4, lr=0.05)
    _train(opt, params, range(2))
    opt.state["ema_of_loss"] = {"value": 0.25, "buffer": torch.ones(2)}
    saved = _through_disk(opt.state_dict())
    assert saved["state"]["ema_of_loss"]["value"] == 0.25

    fresh = make_proximal("sgd", _params(), lam=0.3, window=4, lr=0.05)
    fresh.load_state_dict(saved)
    assert fresh.state["ema_of_loss"]["value"] == 0.25
    assert torch.equal(fresh.state["ema_of_loss"]["buffer"], torch.ones(2))
    assert fresh.state[fresh.param_groups[0]["params"][0]]["window_pos"] == 2


@pytest.mark.parametrize("closure", [False, True], ids=["backward", "closure"])
@pytest.mark.parametrize("inner", ["sgd", "adam", "mlbfgs"])
def test_one_step_fires_the_global_hooks_once(inner: str, closure: bool) -> None:
    params = _params()
    if inner == "mlbfgs":  # a non-torch inner optimizer, evaluating the closure itself
        opt = Proximal(MLBFGS(params, lr=0.05, update_freq=2), lam=0.3, window=3)
    else:
        opt = make_proximal(inner, params, lam=0.3, window=3, lr=0.05)
    calls: list[tuple[str, Any]] = []

    def record(name: str) -> Any:
        return lambda optimizer, args, kwargs: calls.append((name, optimizer))

    handles = [register_optimizer_step_pre_hook(record("global pre")),
               register_optimizer_step_post_hook(record("global post")),
               opt.register_step_pre_hook(record("pre")),
               opt.register_step_post_hook(record("post")),
               opt.inner.register_step_pre_hook(record("inner pre")),
               opt.inner.register_step_post_hook(record("inner post"))]
    try:
        for t in range(5):  # two windows: k = 0 (no coupled term) and k > 0
            if closure:
                def loss_fn(t: int = t) -> Tensor:
                    opt.zero_grad()
                    loss = _loss(params, t)
                    loss.backward()
                    return loss

                opt.step(loss_fn)
            else:
                _train(opt, params, range(t, t + 1))
    finally:
        for handle in handles:
            handle.remove()
    once = ["global pre", "pre", "inner pre", "inner post", "post", "global post"]
    assert [name for name, _ in calls] == once * 5
    for name, optimizer in calls:
        assert optimizer is (opt.inner if name.startswith("inner") else opt)


def test_the_inner_step_is_labelled_only_while_a_profiler_records(
        monkeypatch: pytest.MonkeyPatch) -> None:
    params = _params()
    opt = make_proximal("sgd", params, lam=0.3, window=3, lr=0.05)
    _train(opt, params, range(2))
    labels: list[str] = []
    real = torch.autograd.profiler.record_function

    def counting(name: str, *args: Any) -> Any:
        if name.startswith("Optimizer.step#"):  # not zero_grad's
            labels.append(name)
        return real(name, *args)

    monkeypatch.setattr(torch.autograd.profiler, "record_function", counting)
    _train(opt, params, range(2, 4))  # k = 2, 0: with and without the coupled term
    assert labels == ["Optimizer.step#Proximal.step"] * 2  # torch's own label, not ours
    labels.clear()
    with torch.profiler.profile() as prof:
        _train(opt, params, range(4, 5))
    assert labels == ["Optimizer.step#Proximal.step", "Optimizer.step#SGD.step"]
    assert "Optimizer.step#SGD.step" in {event.name for event in prof.events()}


def test_an_inner_pre_hook_may_replace_the_closure() -> None:
    """The inner's own hooks run as torch runs them: a pre-hook's (args, kwargs) are used."""
    params = _params()
    opt = Proximal(MLBFGS(params, lr=0.05), lam=0.3, window=3)
    seen: list[str] = []

    def swap(optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        def closure() -> Tensor:
            seen.append("swapped")
            return args[1]()

        return (args[0], closure), kwargs

    opt.inner.register_step_pre_hook(swap)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _loss(params, 0)
        loss.backward()
        return loss

    opt.step(closure)
    assert seen == ["swapped"]


def _embedding_step(opt: torch.optim.Optimizer, emb: nn.Embedding, rows: list[int]) -> None:
    opt.zero_grad()
    (emb(torch.tensor(rows)) ** 2).sum().backward()
    opt.step()


def test_coupled_refuses_sparse_gradients_at_every_step_of_a_window() -> None:
    sparse = nn.Embedding(6, 2, sparse=True)
    opt = make_proximal("sgd", sparse.parameters(), lam=0.2, window=3, lr=0.1, momentum=0.0)
    state = opt.state[sparse.weight]
    for t in range(7):  # window positions 0, 1, 2, 0, ...: refused at every one
        before, position = sparse.weight.detach().clone(), state.get("window_pos", 0)
        with pytest.raises(RuntimeError, match=r"Proximal\(coupled=True\) does not support "
                                               r"sparse gradients"):
            _embedding_step(opt, sparse, [1, 3])
        assert torch.equal(sparse.weight, before)  # nothing moved
        assert state.get("window_pos", 0) == position
        opt.zero_grad()
        (sparse.weight[[1, 3]] ** 2).sum().backward()  # a dense gradient moves the window on
        opt.step()
        assert state["window_pos"] == (t + 1) % 3


def test_decoupled_takes_sparse_gradients_as_dense_ones() -> None:
    sparse, dense = nn.Embedding(6, 2, sparse=True), nn.Embedding(6, 2)
    with torch.no_grad():
        dense.weight.copy_(sparse.weight)
    opts = [make_proximal("sgd", m.parameters(), lam=0.2, window=3, lr=0.1, coupled=False)
            for m in (sparse, dense)]
    for t in range(7):
        for opt, m in zip(opts, (sparse, dense), strict=True):
            _embedding_step(opt, m, [t % 6, (t + 2) % 6])
        torch.testing.assert_close(sparse.weight, dense.weight, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "decoupled"])
@pytest.mark.parametrize(("inner", "hparams"), [
    ("sgd", {"lr": 0.05, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.0}),
    ("adam", {"lr": 0.05}),
])
def test_maximizing_f_is_minimizing_minus_f(inner: str, hparams: dict[str, Any],
                                            coupled: bool) -> None:
    """The term pulls toward the anchor whichever way the inner optimizer goes."""
    up, down = _params(), _params()
    maximizer = make_proximal(inner, up, lam=0.8, window=4, coupled=coupled, maximize=True,
                              **hparams)
    minimizer = make_proximal(inner, down, lam=0.8, window=4, coupled=coupled, **hparams)
    _train(maximizer, up, range(10), sign=-1.0)  # maximize -f ...
    _train(minimizer, down, range(10))  # ... is minimize f
    for p, q in zip(up, down, strict=True):
        assert torch.equal(p, q)


def test_maximizing_pulls_toward_the_anchor() -> None:
    """With no gradient at all, a maximizing inner SGD is pulled back toward the anchor."""
    params = _params()
    opt = make_proximal("sgd", params, lam=0.5, window=5, lr=0.1, momentum=0.0, maximize=True,
                        inner_decay="none")
    _train(opt, params, range(1))  # window position 1, anchored at the start
    anchor = [opt.state[p]["anchor"].clone() for p in params]
    gaps = [float((p.detach() - a).norm()) for p, a in zip(params, anchor, strict=True)]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, a, gap in zip(params, anchor, gaps, strict=True):
        assert float((p.detach() - a).norm()) == pytest.approx(gap * (1 - 0.1 * 2 * 0.5), rel=1e-12)
