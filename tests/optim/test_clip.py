"""ClipGradNorm and the registry's clip-sgd: the update, the counters, the contract's edges.

(The conformance table runs clip-sgd through the loss, state_dict, scheduler and bad-input
checks.)
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.nn import functional as F

from sgdlab.optim import MLBFGS, ClipGradNorm, load_optimizer


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = 3.0 * torch.randn(96, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (96,), generator=g)
    return x, y


def _model() -> torch.nn.Linear:
    torch.manual_seed(2)
    return torch.nn.Linear(6, 3).double()


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int,
           sched: torch.optim.lr_scheduler.LRScheduler | None = None) -> list[float]:
    x, y = _data()
    losses = []
    for t in range(steps):
        idx = torch.arange(t * 12, t * 12 + 12) % len(y)

        def closure(idx: torch.Tensor = idx) -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            return loss

        losses.append(float(opt.step(closure).detach()))
        if sched is not None:
            sched.step()
    return losses


@pytest.mark.parametrize("max_norm", [0.05, 0.3, None])
def test_clip_sgd_is_mlbfgs_without_pairs(max_norm: float | None) -> None:
    """Clipped heavy ball with decoupled decay, under a schedule: mL-BFGS before any pair."""
    ours, theirs = _model(), _model()
    hparams = {"lr": 0.2, "momentum": 0.9, "max_norm": max_norm, "weight_decay": 0.01}
    clip = load_optimizer("clip-sgd", ours.parameters(), **hparams)
    mlbfgs = MLBFGS(theirs.parameters(), update_freq=10**6, **hparams)  # type: ignore[arg-type]
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5) for o in (clip, mlbfgs)]
    _train(ours, clip, 20, scheds[0])
    _train(theirs, mlbfgs, 20, scheds[1])
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    if max_norm is not None:
        assert isinstance(clip, ClipGradNorm)
        assert clip.clip_stats()["clipped_steps"] == mlbfgs.diagnostics()["clipped_steps"]
    if max_norm == 0.05:
        assert clip.clip_stats() == {"steps": 20, "clipped_steps": 20}  # the clip did act


def test_below_the_clip_it_is_the_inner_optimizer_exactly() -> None:
    ours, plain = _model(), _model()
    clip = ClipGradNorm(torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.5), max_norm=1e6)
    sgd = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.5)
    assert _train(ours, clip, 8) == _train(plain, sgd, 8)
    for a, b in zip(ours.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    assert clip.clip_stats() == {"steps": 8, "clipped_steps": 0}


def test_the_clip_bounds_the_gradient_the_inner_optimizer_sees() -> None:
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([12.0], dtype=torch.float64))
    opt = ClipGradNorm(torch.optim.SGD([w, b], lr=1.0), max_norm=2.0)
    (0.5 * (w.square().sum() + b.square().sum())).backward()  # gradient (3, 4, 12): norm 13
    opt.step()
    torch.testing.assert_close(w.grad, torch.tensor([3.0, 4.0], dtype=torch.float64) * 2 / 13)
    torch.testing.assert_close(b.detach(), torch.tensor([12.0 - 24 / 13], dtype=torch.float64))


def test_lbfgs_inner_sees_clipped_gradients_in_every_evaluation() -> None:
    model = _model()
    opt = ClipGradNorm(torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=3), max_norm=0.01)
    seen: list[float] = []
    x, y = _data()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def record(*_: object) -> None:  # after the wrapper's closure: the norm LBFGS reads
        seen.append(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()))

    opt.inner.register_step_post_hook(record)
    opt.step(closure)
    assert seen and max(seen) <= 0.01 * (1 + 1e-12)
    assert opt.clip_stats()["clipped_steps"] >= 2  # one per evaluation


def test_copies_step_like_the_original() -> None:
    model = _model()
    opt = load_optimizer("clip-sgd", model.parameters(), lr=0.2, weight_decay=0.01)
    _train(model, opt, 5)
    for clone in (copy.deepcopy((model, opt)), pickle.loads(pickle.dumps((model, opt)))):
        twin, twin_opt = clone
        reference, reference_opt = copy.deepcopy((model, opt))
        assert _train(twin, twin_opt, 4) == _train(reference, reference_opt, 4)
        assert twin_opt.param_groups is twin_opt.inner.param_groups


def test_bad_settings_raise_clearly() -> None:
    params = list(_model().parameters())
    with pytest.raises(TypeError, match="Invalid inner"):
        ClipGradNorm(params, max_norm=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Invalid max_norm: -1"):
        ClipGradNorm(torch.optim.SGD(params, lr=0.1), max_norm=-1.0)
    with pytest.raises(ValueError, match=r"Invalid max_norm: nan"):
        ClipGradNorm(torch.optim.SGD(params, lr=0.1), max_norm=float("nan"))
    with pytest.raises(ValueError, match=r"Invalid weight_decay: 0.1 \(decoupled decay needs"):
        ClipGradNorm(torch.optim.LBFGS(params), weight_decay=0.1)


def test_a_checkpoint_of_other_settings_is_refused() -> None:
    model = _model()
    opt = load_optimizer("clip-sgd", model.parameters(), lr=0.1, max_norm=0.3)
    _train(model, opt, 2)
    other = load_optimizer("clip-sgd", _model().parameters(), lr=0.1, max_norm=0.5)
    with pytest.raises(ValueError, match=r"saved with max_norm=0.3, this optimizer has "
                                         r"max_norm=0.5"):
        other.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="Not a ClipGradNorm state_dict"):
        other.load_state_dict(torch.optim.SGD(_model().parameters(), lr=0.1).state_dict())
