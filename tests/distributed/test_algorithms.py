"""Every algorithm at world size 1, with no process group (rank 0 of 1), against oracles.

With one rank an average is the identity, so SyncSGD, LocalSGD and CoCoD-SGD must follow plain
SGD exactly; Overlap Local-SGD with alpha = 0 too. Overlap Local-SGD with alpha > 0 is checked
against its update rule written out by hand in float64 (the plain-loop specification), and at
W = 1 it coincides with EASGD (the anchor is the pulled-back model of the previous round, which
is what EASGD's center becomes). The conformance checks (state_dict round trip through
torch.save/torch.load(weights_only=True), LR schedulers, bad input) run over the whole table.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from rank_programs import loss_of, synthetic_data

from sgdlab.distributed import ALGORITHMS, OverlapLocalSGD

CASES = {
    "sync": {},
    "local": {"tau": 3},
    "overlap": {"tau": 2, "alpha": 0.5},
    "overlap_momentum": {"tau": 2, "alpha": 0.5, "anchor_momentum": 0.7},
    "easgd": {"tau": 2, "alpha": 0.5},
    "cocod": {"tau": 2},
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 1)).double()


def _build(name: str, model: torch.nn.Module, lr: float = 0.2) -> Any:
    return ALGORITHMS[name.split("_")[0]](
        model, torch.optim.SGD(model.parameters(), lr=lr), **CASES[name]
    )


def _run(model: torch.nn.Module, opt: Any, steps: range) -> None:
    x, y = synthetic_data()
    for step in steps:
        idx = torch.arange(step * 16, step * 16 + 16) % len(y)
        loss_of(model, x[idx], y[idx]).backward()
        opt.step()
        opt.zero_grad()


def _flat(model: torch.nn.Module) -> torch.Tensor:
    ts = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    return torch.cat([t.detach().reshape(-1) for t in ts])


@pytest.mark.parametrize("name", list(CASES))
def test_loss_falls_and_state_dict_round_trips(name: str) -> None:
    x, y = synthetic_data()
    model = _model()
    opt = _build(name, model)
    before = float(loss_of(model, x, y).detach())
    _run(model, opt, range(5))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    model2 = _model()
    opt2 = _build(name, model2)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    _run(model, opt, range(5, 12))
    _run(model2, opt2, range(5, 12))
    assert torch.equal(_flat(model), _flat(model2))
    assert float(loss_of(model, x, y).detach()) < before - 0.05
    assert opt.local_steps == opt2.local_steps == 12


@pytest.mark.parametrize("name", list(CASES))
def test_lr_scheduler_acts_on_the_inner_optimizer(name: str) -> None:
    model = _model()
    opt = _build(name, model, lr=0.4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _run(model, opt, range(1))
    sched.step()
    assert opt.inner.param_groups[0]["lr"] == pytest.approx(0.2)
    assert opt.param_groups is opt.inner.param_groups


@pytest.mark.parametrize("name", ["sync", "local", "cocod"])
def test_one_rank_follows_plain_sgd(name: str) -> None:
    model, ref = _model(), _model()
    _run(model, _build(name, model), range(7))
    _run(ref, torch.optim.SGD(ref.parameters(), lr=0.2), range(7))
    assert torch.equal(_flat(model), _flat(ref))


def test_overlap_matches_its_update_rule_written_out() -> None:
    tau, alpha, beta, lr = 2, 0.5, 0.7, 0.2
    model, ref = _model(), _model()
    opt = OverlapLocalSGD(model, torch.optim.SGD(model.parameters(), lr=lr), tau=tau,
                          alpha=alpha, anchor_momentum=beta)
    _run(model, opt, range(9))
    # The rule by hand, one rank: anchor z, velocity v, the in-flight average m.
    sgd = torch.optim.SGD(ref.parameters(), lr=lr)
    ts = [*ref.parameters(), *(b for b in ref.buffers() if b.is_floating_point())]
    n_params = len(list(ref.parameters()))
    z = [t.detach().clone() for t in ts]
    v = [torch.zeros_like(t) for t in ts]
    inflight: list[torch.Tensor] | None = None
    x, y = synthetic_data()
    for step in range(9):
        idx = torch.arange(step * 16, step * 16 + 16) % len(y)
        loss_of(ref, x[idx], y[idx]).backward()
        sgd.step()
        sgd.zero_grad()
        if (step + 1) % tau:
            continue
        with torch.no_grad():
            if inflight is not None:
                for i in range(len(ts)):
                    if i >= n_params:  # a buffer's anchor is the plain mean
                        z[i] = inflight[i]
                        continue
                    v[i] = beta * v[i] + (z[i] - inflight[i]) / lr
                    z[i] = z[i] - lr * v[i]
            for t, zi in zip(ts, z, strict=True):
                t.copy_(t - alpha * (t - zi))
            inflight = [t.detach().clone() for t in ts]
    torch.testing.assert_close(_flat(model), _flat(ref), rtol=1e-12, atol=1e-12)


def test_overlap_anchor_momentum_keeps_batchnorm_running_variance_valid() -> None:
    # The running variance falls 10^4-fold at once from its initial 1 (inputs of scale 0.01,
    # running statistics with momentum 1): a heavy-ball anchor on it overshoots below 0 within
    # four rounds, and the model in eval mode then computes NaN (sqrt of a negative variance).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(4, momentum=1.0),
                                torch.nn.Linear(4, 1)).double()
    opt = OverlapLocalSGD(model, torch.optim.SGD(model.parameters(), lr=0.1), tau=2,
                          alpha=0.6, anchor_momentum=0.9)
    x = 0.01 * torch.randn(64, 4, dtype=torch.float64)
    bn = model[0]
    for step in range(12):
        model(x[(step * 8) % 64:][:8]).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        assert bool((bn.running_var >= 0).all()), (step, bn.running_var)
    model.eval()
    assert torch.isfinite(model(x)).all()


def test_overlap_without_pull_back_is_local_sgd_and_equals_easgd_on_one_rank() -> None:
    a, b, c = _model(), _model(), _model()
    _run(a, OverlapLocalSGD(a, torch.optim.SGD(a.parameters(), lr=0.2), tau=2, alpha=0.0),
         range(6))
    _run(b, torch.optim.SGD(b.parameters(), lr=0.2), range(6))
    assert torch.equal(_flat(a), _flat(b))
    a, c = _model(), _model()
    _run(a, _build("overlap", a), range(8))
    _run(c, _build("easgd", c), range(8))
    torch.testing.assert_close(_flat(a), _flat(c), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("local", {"tau": 0}, r"Invalid tau: 0"),
    ("overlap", {"alpha": 1.5}, r"Invalid alpha: 1.5"),
    ("overlap", {"anchor_momentum": 1.0}, r"Invalid anchor_momentum: 1.0"),
    ("easgd", {"alpha": 0.0}, r"Invalid alpha: 0.0"),
    ("cocod", {"tau": 2.5}, r"Invalid tau: 2.5"),
])
def test_bad_hyperparameters_raise(name: str, kwargs: dict[str, Any], message: str) -> None:
    model = _model()
    with pytest.raises(ValueError, match=message):
        ALGORITHMS[name](model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_inner_optimizer_must_hold_the_models_parameters() -> None:
    model, other = _model(), _model()
    with pytest.raises(ValueError, match="Invalid inner optimizer"):
        ALGORITHMS["local"](model, torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="Invalid inner optimizer"):
        ALGORITHMS["local"](model, "sgd")  # type: ignore[arg-type]


def test_clocks_split_the_wall_time_and_synchronize_is_outside_them() -> None:
    model = _model()
    opt = _build("overlap", model)
    opt.start_clock()
    _run(model, opt, range(5))
    s = opt.summary()
    assert s["wall_seconds"] == pytest.approx(s["compute_seconds"] + s["wait_seconds"])
    assert s["rounds"] == 3  # two full rounds and the last, incomplete one
    assert s["comm_seconds"] == 0.0 and s["hidden_fraction"] == 0.0  # nobody to talk to
    before = copy.deepcopy(opt.rounds)
    opt.synchronize()
    assert opt.rounds == before and not opt.pending
