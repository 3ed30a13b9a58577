"""mL-BFGS: oracles (textbook two-loop, torch.optim.LBFGS, SGD), the contract, safety."""

from __future__ import annotations

import copy
import functools
import io
import math
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from mlbfgs_toys import backward, batches, mlp, newest_pair
from torch import Tensor

from sgdlab.errors import CheckpointError
from sgdlab.optim._history import add_pair, damp_pair, new_history
from sgdlab.optim.mlbfgs import MLBFGS, MLBFGSConfig

F64 = torch.float64
# Settings that turn mL-BFGS into plain L-BFGS: no averaging, a pair every step, no damping,
# no clipping, no heavy ball.
PLAIN_LBFGS: dict[str, Any] = dict(
    momentum=0.0,
    beta_param=0.0,
    beta_grad=0.0,
    pair_momentum=0.0,
    update_freq=1,
    damping=(0.0, math.inf, 0.0),
    max_norm=None,
)


def logistic_problem(seed: int = 0, n: int = 120, d: int = 6) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64) * torch.linspace(0.3, 2.0, d, dtype=F64)
    w = torch.randn(d, generator=g, dtype=F64)
    y = (torch.rand(n, generator=g, dtype=F64) < torch.sigmoid(x @ w)).to(F64)
    return x, y


def cross_entropy_with_logits(z: Tensor, y: Tensor) -> Tensor:
    # log(1 + e^z) - y z, the binary cross-entropy; torch's fused kernel is ~100 times slower
    # on small batches when it spreads over threads of a busy machine.
    return (torch.nn.functional.softplus(z) - y * z).mean()


def logistic_loss(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return cross_entropy_with_logits(x @ w + b, y)


def textbook_direction(g: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Nocedal & Wright, Algorithm 7.4, with H0 = (s'y / y'y) I of the newest pair."""
    q = g.copy()
    alpha = []
    for s, y in reversed(pairs):
        alpha.append(s @ q / (y @ s))
        q = q - alpha[-1] * y
    s_new, y_new = pairs[-1]
    r = (s_new @ y_new) / (y_new @ y_new) * q
    for (s, y), a in zip(pairs, reversed(alpha), strict=True):
        r = r + s * (a - y @ r / (y @ s))
    return r


def test_plain_settings_match_textbook_lbfgs_two_loop() -> None:
    x, y = logistic_problem()
    w = torch.nn.Parameter(torch.full((6,), 1.5, dtype=F64))
    b = torch.nn.Parameter(torch.zeros(1, dtype=F64))
    lr, m = 0.5, 3
    opt = MLBFGS([w, b], lr=lr, history_size=m, blocks=lambda ps: [[0, 1]], **PLAIN_LBFGS)
    thetas, grads = [], []
    for _ in range(10):
        opt.zero_grad()
        logistic_loss(w, b, x, y).backward()
        thetas.append(torch.cat([w.detach(), b.detach()]).numpy().copy())
        grads.append(torch.cat([w.grad, b.grad]).numpy().copy())  # type: ignore[list-item]
        opt.step()
    thetas.append(torch.cat([w.detach(), b.detach()]).numpy().copy())
    for k in range(10):
        pairs = [
            (thetas[i + 1] - thetas[i], grads[i + 1] - grads[i]) for i in range(max(0, k - m), k)
        ]
        d = textbook_direction(grads[k], pairs) if pairs else grads[k]
        np.testing.assert_allclose(thetas[k + 1] - thetas[k], -lr * d, rtol=1e-9, atol=1e-13)
    assert opt.diagnostics()["pairs_accepted"] == 9


def test_plain_settings_match_torch_lbfgs_without_line_search() -> None:
    x, y = logistic_problem(seed=1)
    params = [torch.zeros(6, dtype=F64), torch.zeros(1, dtype=F64)]
    ours = [torch.nn.Parameter(p.clone()) for p in params]
    ref = [torch.nn.Parameter(p.clone()) for p in params]
    opt = MLBFGS(ours, lr=0.5, history_size=4, blocks="size:100", **PLAIN_LBFGS)
    opt_ref = torch.optim.LBFGS(
        ref, lr=0.5, max_iter=1, history_size=4, tolerance_grad=0.0, tolerance_change=0.0
    )

    def closure_for(opt_: torch.optim.Optimizer, ps: list[torch.nn.Parameter]) -> Callable:
        def closure() -> Tensor:
            opt_.zero_grad()
            loss = logistic_loss(ps[0], ps[1], x, y)
            loss.backward()
            return loss

        return closure

    # torch's first step is lr * min(1, 1/|g|_1) * g: equal to ours when |g|_1 <= 1.
    closure_for(opt_ref, ref)()
    assert sum(float(p.grad.abs().sum()) for p in ref if p.grad is not None) <= 1.0
    for _ in range(12):
        opt.step(closure_for(opt, ours))
        opt_ref.step(closure_for(opt_ref, ref))
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_warm_up_is_momentum_sgd_exactly() -> None:
    model, twin = mlp(), mlp()
    opt = MLBFGS(model.parameters(), lr=0.05, momentum=0.9, update_freq=6, max_norm=None)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, foreach=False)
    for batch in batches(0, 6):  # steps 1..T, before the first pair is formed at T + 1
        backward(model, batch)
        backward(twin, batch)
        opt.step()
        sgd.step()
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(a, b)
    grad_norm = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in twin.parameters()]))
    assert opt.diagnostics()["direction_norm"] == pytest.approx(float(grad_norm), rel=1e-12)


def test_warm_up_clips_the_gradient_like_clip_grad_norm() -> None:
    model, twin = mlp(), mlp()
    opt = MLBFGS(model.parameters(), lr=0.05, momentum=0.9, update_freq=6, max_norm=0.05)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, foreach=False)
    for batch in batches(0, 6):
        backward(model, batch)
        backward(twin, batch)
        opt.step()
        # torch adds 1e-6 to the norm; ours divides by the norm itself.
        torch.nn.utils.clip_grad_norm_(twin.parameters(), max_norm=0.05)
        sgd.step()
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert opt.diagnostics()["clipped_steps"] == 6


def quadratic_closure(seed: int, dtype: torch.dtype) -> tuple[list[Tensor], Callable[[], Tensor]]:
    """torch's own "goes the right direction" problem: ‖W x + b‖² for a random W, b, x."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(10, 5, generator=g, dtype=dtype))
    bias = torch.nn.Parameter(torch.randn(10, generator=g, dtype=dtype))
    x = torch.randn(5, generator=g, dtype=dtype)

    def closure() -> Tensor:
        weight.grad = bias.grad = None
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    return [weight, bias], closure


@pytest.mark.parametrize("lr", [0.01, 0.1])
def test_every_default_is_safe_where_momentum_sgd_converges(lr: float) -> None:
    # The heavy ball sums directions that were each clipped, the warm-up's gradients too, so
    # every step is at most lr * max_norm / (1 - momentum) long. (It once clipped only the
    # preconditioned directions: the buffer filled by the first T raw gradients coasted on,
    # and the loss ended above its start on 17 of 20 seeds at lr 0.01.)
    bound = lr * MLBFGSConfig().max_norm / (1.0 - MLBFGSConfig().momentum)  # type: ignore[operator]
    for seed in range(20):
        for dtype in (torch.float32, F64):
            params, closure = quadratic_closure(seed, dtype)
            opt = MLBFGS(params, lr=lr)
            start = closure().item()
            for _ in range(20):
                before = torch.cat([p.detach().reshape(-1).clone() for p in params])
                opt.step(closure)
                after = torch.cat([p.detach().reshape(-1) for p in params])
                assert float(torch.linalg.vector_norm(after - before)) <= bound * (1 + 1e-5)
            assert closure().item() < start, (seed, dtype)
            sgd_params, sgd_closure = quadratic_closure(seed, dtype)
            sgd = torch.optim.SGD(sgd_params, lr=lr, momentum=0.9)
            for _ in range(20):
                sgd.step(sgd_closure)
            if lr == 0.01:  # where SGD-momentum converges, so must we
                assert sgd_closure().item() < start


# -- the Optimizer contract --------------------------------------------------------------------

CONTRACT: dict[str, Any] = dict(update_freq=3, history_size=4, pair_momentum=0.5, weight_decay=1e-2)


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_a_one_element_tensor_lr_steps_like_the_number(shape: tuple[int, ...]) -> None:
    model, twin = mlp(), mlp()
    opt = MLBFGS(model.parameters(), lr=torch.full(shape, 0.05, dtype=F64), **CONTRACT)
    ref = MLBFGS(twin.parameters(), lr=0.05, **CONTRACT)
    for batch in batches(2, 8):
        for m, o in ((model, opt), (twin, ref)):
            backward(m, batch)
            o.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_tensor_lr_of_several_elements_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Invalid lr: a tensor lr must have one element, got 2"):
        MLBFGS(mlp().parameters(), lr=torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_optimizer_steps_like_the_original(how: str) -> None:
    model = mlp()
    opt = MLBFGS(model.parameters(), **CONTRACT)
    data = batches(3, 12)
    for batch in data[:5]:
        backward(model, batch)
        opt.step()
    if how == "deepcopy":
        twin, twin_opt = copy.deepcopy((model, opt))
    else:
        twin, twin_opt = pickle.loads(pickle.dumps((model, opt)))
    for batch in data[5:]:
        for m, o in ((model, opt), (twin, twin_opt)):
            backward(m, batch)
            o.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert twin_opt.diagnostics()["pairs_accepted"] == opt.diagnostics()["pairs_accepted"]


@pytest.mark.parametrize("secant", ["averaged", "same-batch"])
def test_state_dict_round_trip_mid_run_continues_identically(secant: str) -> None:
    model = mlp()
    opt = MLBFGS(model.parameters(), secant=secant, **CONTRACT)
    data = batches(1, 20)
    for batch in data[:8]:  # pairs at steps 4 and 7; step 8 is between pair steps
        opt.step(functools.partial(backward, model, batch))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = mlp(seed=99)
    resumed.load_state_dict(saved["model"])
    opt2 = MLBFGS(resumed.parameters(), secant=secant, **CONTRACT)
    opt2.load_state_dict(saved["opt"])
    for batch in data[8:]:
        for m, o in ((model, opt), (resumed, opt2)):
            o.step(functools.partial(backward, m, batch))
        for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
            assert torch.equal(a, b)
    assert opt.diagnostics() == opt2.diagnostics()
    assert opt.diagnostics()["pairs_accepted"] > 0


def test_checkpoint_from_other_blocks_is_refused() -> None:
    model = mlp()
    opt = MLBFGS(model.parameters(), update_freq=1)
    for batch in batches(2, 3):
        backward(model, batch)
        opt.step()
    other = MLBFGS(model.parameters(), update_freq=1, blocks="size:1000")
    with pytest.raises(CheckpointError, match="same blocks policy"):
        other.load_state_dict(opt.state_dict())


def test_step_returns_closure_loss_and_follows_lr_scheduler() -> None:
    model = mlp()
    opt = MLBFGS(model.parameters(), update_freq=2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 if epoch < 4 else 0.0)
    for i, batch in enumerate(batches(3, 8)):
        before = [p.detach().clone() for p in model.parameters()]
        loss = opt.step(functools.partial(backward, model, batch))
        assert isinstance(loss, Tensor) and loss.ndim == 0
        moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        assert moved == (i < 4)
        sched.step()
    assert sched.get_last_lr() == [0.0]


def test_closure_loss_is_the_loss_at_the_parameters_before_the_step() -> None:
    model = mlp()
    opt = MLBFGS(model.parameters())
    batch = batches(4, 1)[0]
    expected = ((model(batch[0]) - batch[1]) ** 2).mean().item()
    assert opt.step(lambda: backward(model, batch)).item() == expected
    assert opt.step() is None


def test_weight_decay_acts_on_parameters_not_on_gradients_or_pairs() -> None:
    w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5, dtype=F64))
    w0 = w.detach().clone()
    lr, decay, sigma_low = 0.1, 0.3, 0.1
    opt = MLBFGS([w], lr=lr, weight_decay=decay, update_freq=2, damping=(sigma_low, 10.0, 0.0))
    for _ in range(7):
        w.grad = torch.zeros_like(w)  # the loss is flat: only weight decay moves w
        opt.step()
    torch.testing.assert_close(w.detach(), w0 * (1 - lr * decay) ** 7, rtol=1e-13, atol=0)
    assert torch.count_nonzero(opt.state[w]["momentum_buffer"]) == 0
    block = opt.state[w]["mlbfgs_block"]
    # y came from the raw (zero) gradients, ratio 0, damped onto sigma_low; weight decay in
    # the gradient would have given y = decay * s instead.
    s_new, y_new = newest_pair(block)
    torch.testing.assert_close(y_new, sigma_low * s_new)


def test_param_groups_share_the_curvature_model_but_not_the_step() -> None:
    model = mlp()
    first, *rest = list(model.parameters())
    opt = MLBFGS([{"params": [first], "lr": 0.0}, {"params": rest}], update_freq=2)
    before = first.detach().clone()
    for batch in batches(5, 6):
        backward(model, batch)
        opt.step()
    assert torch.equal(first, before)
    assert opt.diagnostics()["pairs_accepted"] > 0
    with pytest.raises(ValueError, match="Invalid history_size: param groups"):
        MLBFGS([{"params": [first], "history_size": 3}, {"params": rest}])
    with pytest.raises(ValueError, match="add_param_group"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))]})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(lr=-1.0), r"Invalid lr: -1.0"),
        (dict(history_size=0), r"Invalid history_size: 0"),
        (dict(history_size=2.5), r"Invalid history_size: 2.5"),
        (dict(update_freq=0), r"Invalid update_freq: 0"),
        (dict(momentum=1.0), r"Invalid momentum: 1.0"),
        (dict(beta_param=1.0, beta_grad=1.0), r"Invalid beta_param: 1.0"),
        (dict(pair_momentum=-0.1), r"Invalid pair_momentum: -0.1"),
        (dict(damping=(1.0, 2.0, 0.0)), r"Invalid damping"),
        (dict(damping=(0.1, 0.9, 0.0)), r"Invalid damping"),
        (dict(damping=(0.1, 2.0, 1.0)), r"Invalid damping"),
        (dict(damping="soft"), r"Invalid damping"),
        (dict(weight_decay=-1e-4), r"Invalid weight_decay: -0.0001"),
        (dict(max_norm=0.0), r"Invalid max_norm: 0.0"),
        (dict(blocks="size:0"), r"Invalid blocks: 'size:0'"),
        (dict(blocks="module"), r"Invalid blocks: 'module'"),
        (dict(blocks=lambda ps: [[0]]), r"Invalid blocks: .* exactly one"),
        (dict(blocks=lambda ps: [[0, 1], [1, 2, 3], []]), r"Invalid blocks"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MLBFGS(mlp().parameters(), **kwargs)


def test_unequal_betas_are_warned_about() -> None:
    with pytest.warns(UserWarning, match="beta_param=0.9 differs from beta_grad=0.99"):
        MLBFGS(mlp().parameters(), beta_param=0.9, beta_grad=0.99)


# -- damping, safety, diagnostics ----------------------------------------------------------------


@pytest.mark.parametrize(("ratio", "edge"), [(-3.0, 0.2), (0.05, 0.2), (40.0, 5.0)])
def test_damping_moves_the_ratio_onto_the_band_edge(ratio: float, edge: float) -> None:
    s = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    e = torch.tensor([2.0, -1.0, 0.0], dtype=F64)  # orthogonal to s
    y = ratio * s + 3.0 * e
    damped, phi = damp_pair(s, y.clone(), (0.2, 5.0, 0.0))
    assert 0.0 < phi < 1.0
    assert float(s @ damped / (s @ s)) == pytest.approx(edge, rel=1e-12)
    torch.testing.assert_close(damped, phi * y + (1 - phi) * s)


def test_delta_mixes_s_into_every_pair() -> None:
    s = torch.tensor([1.0, 0.0], dtype=F64)
    y = torch.tensor([2.0, 1.0], dtype=F64)  # ratio 2 lies in the band
    damped, phi = damp_pair(s, y.clone(), (0.1, 10.0, 0.25))
    assert phi == 0.75
    torch.testing.assert_close(damped, torch.tensor([1.75, 0.75], dtype=F64))


def _curvature_run(steps: int, **kwargs: Any) -> tuple[torch.nn.Module, MLBFGS]:
    model = mlp()
    opt = MLBFGS(model.parameters(), update_freq=2, **kwargs)
    for batch in batches(6, steps):
        backward(model, batch)
        opt.step()
    return model, opt


def test_nonfinite_pair_resets_its_block_only() -> None:
    model, opt = _curvature_run(6)  # pairs at steps 3 and 5; step 7 forms the next one
    first = next(model.parameters())
    opt.state[first]["param_avg"][0, 0] = math.nan
    backward(model, batches(7, 1)[0])
    opt.step()
    diag = opt.diagnostics()
    assert diag["nonfinite_resets"] == 1
    assert diag["history"][0] == 0 and diag["history"][1] == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for batch in batches(8, 2):  # the block learns again from re-seeded averages
        backward(model, batch)
        opt.step()
    assert opt.diagnostics()["history"][0] == 1


def test_nonfinite_direction_falls_back_to_the_gradient() -> None:
    model, opt = _curvature_run(6, momentum=0.0, max_norm=None, lr=0.1)
    first = next(model.parameters())
    block = opt.state[first]["mlbfgs_block"]
    m = block["valid"].numel()
    block["gram"][m, m] = math.nan  # a y'y: the compact form's small solve is not finite
    backward(model, batches(7, 1)[0])
    before, grad = first.detach().clone(), first.grad.clone()  # type: ignore[union-attr]
    opt.step()
    torch.testing.assert_close(first.detach(), before - 0.1 * grad, rtol=0, atol=1e-15)
    assert opt.diagnostics()["nonfinite_resets"] == 1


@pytest.mark.parametrize("steps", [1, 5])  # warm-up; curvature phase, not a pair step
def test_nonfinite_gradient_does_not_move_its_block(steps: int) -> None:
    model, opt = _curvature_run(steps, momentum=0.0)
    params = list(model.parameters())
    backward(model, batches(7, 1)[0])
    params[0].grad[1, 1] = math.nan  # type: ignore[index]
    before = [p.detach().clone() for p in params]
    history = opt.diagnostics()["history"]
    opt.step()
    assert torch.equal(params[0], before[0])
    assert not torch.equal(params[2], before[2])
    assert all(torch.isfinite(p).all() for p in params)
    diag = opt.diagnostics()
    assert diag["nonfinite_grads"] == 1
    assert diag["nonfinite_resets"] == 0 and diag["history"] == history  # not the pairs' fault


@pytest.mark.parametrize("gradient", ["zero", "nonfinite"])
def test_authors_unit_direction_of_a_zero_direction_keeps_the_parameters_finite(
    gradient: str,
) -> None:
    # The authors' variant divides the direction by its norm from step 2T on; a direction of
    # norm 0 (an exact zero gradient, or every block's gradient non-finite and zeroed) must
    # not become 0 / 0 in the parameters and the heavy ball.
    model, opt = _curvature_run(5, variant="authors", max_norm=None)
    params = list(model.parameters())
    backward(model, batches(7, 1)[0])
    for p in params:
        p.grad = torch.zeros_like(p) if gradient == "zero" else torch.full_like(p, math.nan)
    before = [p.detach().clone() for p in params]
    opt.step()
    assert opt.diagnostics()["direction_norm"] == 0.0
    assert all(torch.isfinite(p).all() for p in params)
    assert all(torch.isfinite(opt.state[p]["momentum_buffer"]).all() for p in params)
    for batch in batches(8, 2):  # and the run goes on
        backward(model, batch)
        opt.step()
    assert all(torch.isfinite(p).all() for p in params)
    assert not all(torch.equal(a, b) for a, b in zip(params, before, strict=True))


def test_pair_history_is_a_ring_and_refuses_bad_pairs() -> None:
    block = new_history(2, 2, torch.float32, torch.device("cpu"))
    band = (0.1, 10.0, 0.0)
    pairs = [(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])) for _ in range(3)]
    pairs[2] = (torch.tensor([0.0, 1.0]), torch.tensor([0.0, 4.0]))
    for s, y in pairs:
        assert not add_pair(block, s, y, band, pair_momentum=0.0)
    assert int(block["valid"].sum()) == 2 and int(block["head"]) == 3
    assert torch.equal(newest_pair(block)[0], pairs[2][0])
    assert torch.equal(block["pairs"][1], pairs[1][0])  # the oldest slot was overwritten
    torch.testing.assert_close(block["gram"], block["pairs"] @ block["pairs"].T)
    assert float(block["gamma"]) == 0.25
    assert not add_pair(block, torch.zeros(2), torch.ones(2), band, 0.0)
    assert int(block["rejected"]) == 1 and int(block["head"]) == 3
    nan = torch.tensor([math.nan, 0.0])
    assert add_pair(block, torch.ones(2), nan, band, 0.0)
    assert int(block["valid"].sum()) == 0 and int(block["nonfinite_resets"]) == 1


def test_direction_is_clipped_to_max_norm() -> None:
    model, opt = _curvature_run(4, momentum=0.0, max_norm=1e-3, lr=0.5)
    backward(model, batches(7, 1)[0])
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    opt.step()
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    diag = opt.diagnostics()
    assert diag["direction_norm"] > 1e-3 and diag["clipped_steps"] == 5  # warm-up included
    assert float(torch.linalg.vector_norm(after - before)) == pytest.approx(0.5e-3, rel=1e-9)
