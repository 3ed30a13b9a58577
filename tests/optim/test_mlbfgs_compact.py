"""mL-BFGS's ring-buffer history and compact form (issue S5, part 2): the compact form equals the
two-loop recursion (the specification), the step reads nothing back from the device, and
checkpoints of the list layout load into the ring buffers."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

from sgdlab.optim._curvature import damping_factor, two_loop
from sgdlab.optim._history import (
    COUNTERS,
    add_pair,
    add_pairs,
    compact_coefficients,
    damp_pair,
    new_history,
)
from sgdlab.optim.mlbfgs import MLBFGS

F64 = torch.float64
NO_DAMPING = (0.0, math.inf, 0.0)


def _kept_pairs(seed: int, n: int, count: int) -> list[tuple[Tensor, Tensor]]:
    """Pairs of a random SPD quadratic (y = A s), so every one is kept."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=F64)
    a = q @ q.T / n + 0.1 * torch.eye(n, dtype=F64)
    pairs = []
    for _ in range(count):
        s = torch.randn(n, generator=g, dtype=F64)
        pairs.append((s, a @ s))
    return pairs


@pytest.mark.parametrize(("m", "count"), [(4, 1), (4, 3), (4, 4), (4, 9), (1, 3)])
def test_compact_form_equals_the_two_loop_recursion(m: int, count: int) -> None:
    # count > m wraps the ring (the oldest slots overwritten), count < m leaves empty slots.
    n = 12
    pairs = _kept_pairs(count, n, count)
    blocks = []
    for offset in (0, 1):  # two blocks solved together, one pair apart in their rings
        block = new_history(n, m, F64, torch.device("cpu"))
        for s, y in pairs[offset:]:
            assert not add_pair(block, s.clone(), y.clone(), NO_DAMPING, 0.0)
        blocks.append(block)
    g = torch.randn(n, generator=torch.Generator().manual_seed(7), dtype=F64)
    coeffs, gamma, ok = compact_coefficients(blocks, [b["pairs"] @ g for b in blocks])
    assert bool(ok.all())
    for k, (block, offset) in enumerate(zip(blocks, (0, 1), strict=True)):
        kept = pairs[offset:][-m:]
        if not kept:
            continue
        s, y = [p[0] for p in kept], [p[1] for p in kept]
        rho = [1.0 / float(a @ b) for a, b in kept]
        expected = two_loop(g, s, y, rho, float(s[-1] @ y[-1] / (y[-1] @ y[-1])))
        ours = gamma[k] * g + block["pairs"].T @ coeffs[k]
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ratio", [-3.0, 0.05, 0.5, 1.7, 40.0])
@pytest.mark.parametrize("band", [(0.2, 5.0, 0.0), (0.2, 5.0, 0.3), (0.0, math.inf, 0.0)])
def test_device_damping_follows_the_scalar_specification(
    ratio: float, band: tuple[float, float, float]
) -> None:
    s = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    y = ratio * s + 3.0 * torch.tensor([2.0, -1.0, 0.0], dtype=F64)  # s'y / s's = ratio
    phi = min(damping_factor(ratio, band[0], band[1]), 1.0 - band[2])
    damped, phi_device = damp_pair(s, y.clone(), band)
    assert float(phi_device) == pytest.approx(phi, rel=1e-12)
    torch.testing.assert_close(damped, y if phi >= 1.0 else phi * y + (1 - phi) * s)


def test_empty_history_leaves_the_gradient_exactly() -> None:
    block = new_history(5, 3, torch.float32, torch.device("cpu"))
    g = torch.randn(5)
    coeffs, gamma, _ = compact_coefficients([block], [block["pairs"] @ g])
    d = g.clone().mul_(gamma[0].float()).addmv_(block["pairs"].T, coeffs[0].float())
    assert torch.equal(d, g)


@contextlib.contextmanager
def _no_reads_from_the_device() -> Iterator[None]:
    """Make every way of reading a tensor's value into Python raise."""

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("the step read a value back from the device")

    names = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")
    saved = {name: getattr(Tensor, name) for name in names}
    try:
        for name in names:
            setattr(Tensor, name, refuse)
        yield
    finally:
        for name, fn in saved.items():
            setattr(Tensor, name, fn)


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _backward(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=g)
    model.zero_grad()
    ((model(x) - x[:, :2].sin()) ** 2).mean().backward()


def test_the_step_reads_nothing_back_from_the_device() -> None:
    model = _mlp()
    groups = [
        {"params": list(model[0].parameters())},
        {"params": list(model[2].parameters()), "weight_decay": 1e-2},
    ]
    opt = MLBFGS(groups, update_freq=2, history_size=3, pair_momentum=0.5, max_norm=0.05)
    for step in range(12):  # warm-up, pair steps, a full ring, clipping
        _backward(model, step)
        with _no_reads_from_the_device():
            opt.step()
    diag = opt.diagnostics()
    assert diag["pairs_accepted"] > 0 and diag["clipped_steps"] > 0
    assert all(held == 3 for held in diag["history"].values())


def _to_list_layout(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint as the list layout (before the ring buffers) wrote it: per block the kept
    pairs as lists oldest first, rho, gamma and the counters as Python numbers."""
    out: dict[str, Any] = {"param_groups": state_dict["param_groups"], "state": {}}
    for index, entry in state_dict["state"].items():
        entry = dict(entry)
        if "mlbfgs_global" in entry:
            glob = entry["mlbfgs_global"]
            entry["mlbfgs_global"] = {
                "step": glob["step"],
                "direction_norm": float(glob["direction_norm"]),
                "clipped_steps": int(glob["clipped_steps"]),
            }
        if "mlbfgs_block" in entry:
            ring = entry["mlbfgs_block"]
            m = ring["valid"].numel()
            head = int(ring["head"])
            order = [(head + k) % m for k in range(m) if bool(ring["valid"][(head + k) % m])]
            s = [ring["pairs"][k].clone() for k in order]
            y = [ring["pairs"][m + k].clone() for k in order]
            old = {
                "params": ring["params"],
                "s": s,
                "y": y,
                "rho": [1.0 / float(a @ b) for a, b in zip(s, y, strict=True)],
                "gamma": float(ring["gamma"]),
                "s_avg": None,
                "y_avg": None,
                "param_snapshot": ring["param_snapshot"],
                "grad_snapshot": ring["grad_snapshot"],
                **{key: int(ring[key]) for key in COUNTERS},
            }
            entry["mlbfgs_block"] = old
        out["state"][index] = entry
    return out


@pytest.mark.parametrize("layout", ["ring", "list"])
def test_a_checkpoint_resumes(layout: str) -> None:
    # The ring layout resumes bit for bit; the list layout is converted into other ring slots
    # and a Gram matrix taken in one product, so it resumes to rounding.
    kwargs: dict[str, Any] = dict(update_freq=2, history_size=3)
    model = _mlp()
    opt = MLBFGS(model.parameters(), **kwargs)
    for step in range(11):  # the ring has wrapped: head is past m
        _backward(model, step)
        opt.step()
    saved = opt.state_dict()
    if layout == "list":
        saved = _to_list_layout(saved)
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    twin_model = _mlp()
    twin_model.load_state_dict(model.state_dict())
    twin = MLBFGS(twin_model.parameters(), **kwargs)
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    assert twin.diagnostics() == opt.diagnostics()
    for step in range(11, 20):
        _backward(model, step)
        _backward(twin_model, step)
        opt.step()
        twin.step()
        for a, b in zip(model.parameters(), twin_model.parameters(), strict=True):
            if layout == "ring":
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _trajectory(monkeypatch: pytest.MonkeyPatch, cache: str) -> list[Tensor]:
    """Parameters after 24 steps through pair steps, a wrapped ring, a non-finite gradient, a
    Gram matrix written in place (its history reset) and a reload, with the compact matrices
    kept as the optimizer keeps them (``"kept"``), made afresh at every step (``"fresh"``), or
    never made again once made (``"stale"``, a broken cache)."""
    from sgdlab.optim import _history

    made = _history._cached_compact
    if cache == "fresh":
        monkeypatch.setattr(_history, "_cached_compact", lambda blocks, _: made(blocks, None))
    if cache == "stale":
        monkeypatch.setattr(_history, "_cached_compact",
                            lambda blocks, kept: kept["value"] if "value" in kept
                            else made(blocks, kept))
    model = _mlp()
    opt = MLBFGS(model.parameters(), update_freq=2, history_size=3, max_norm=0.5)
    for step in range(24):
        _backward(model, step)
        if step == 9:
            model[0].weight.grad[0, 0] = math.nan  # type: ignore[index]
        if step == 14:
            opt.state[model[2].weight]["mlbfgs_block"]["gram"][3, 3] = math.nan
        if step == 18:
            opt.load_state_dict(opt.state_dict())
        opt.step()
    monkeypatch.undo()
    if cache != "stale":
        assert opt.diagnostics()["nonfinite_resets"] == 1
        assert opt.diagnostics()["nonfinite_grads"] == 1
    return [p.detach().clone() for p in model.parameters()]


def test_kept_compact_matrices_equal_fresh_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    # Between pair steps a step reuses its blocks' compact matrices: they must be exactly what
    # making them afresh at every step gives. The check can fail: a stale cache differs.
    kept = _trajectory(monkeypatch, "kept")
    fresh = _trajectory(monkeypatch, "fresh")
    stale = _trajectory(monkeypatch, "stale")
    assert all(torch.equal(a, b) for a, b in zip(kept, fresh, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(stale, fresh, strict=True))


def test_pairs_of_blocks_of_several_dtypes_have_each_block_s_own_numbers() -> None:
    # add_pairs takes its blocks' decisions together; a float32 block's damping and gamma must
    # be what that block alone gives, not float32 numbers promoted to float64 beside a float64
    # block (which made a sharded step, whose ranks stack other blocks, leave the single one).
    band = (0.5, 2.0, 0.0)  # the ratios below lie outside it: every pair is damped
    g = torch.Generator().manual_seed(3)
    cases = []
    for k in range(8):
        dtype = torch.float32 if k % 2 == 0 else F64
        s = torch.randn(9, generator=g, dtype=F64)
        y = (0.05 + 10.0 * (k % 3)) * s + torch.randn(9, generator=g, dtype=F64)
        cases.append((s.to(dtype), y.to(dtype)))
    together = [new_history(9, 3, s.dtype, torch.device("cpu")) for s, _ in cases]
    alone = [new_history(9, 3, s.dtype, torch.device("cpu")) for s, _ in cases]
    add_pairs(together, [s for s, _ in cases], [y for _, y in cases], band, 0.0)
    for block, (s, y) in zip(alone, cases, strict=True):
        add_pair(block, s, y, band, 0.0)
    assert sum(int(b["damped"]) for b in alone) == len(cases)
    for a, b in zip(together, alone, strict=True):
        for key in ("pairs", "gram", "gamma", "valid", "head"):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_a_step_under_inference_mode_steps_as_outside_it() -> None:
    # As torch's optimizers do. Tensors made under inference mode have no version counter, by
    # which the kept compact matrices are checked: the step must not rely on it there.
    runs = []
    for inference in (False, True):
        model = _mlp()
        opt = MLBFGS(model.parameters(), update_freq=2, history_size=3)
        for step in range(9):  # pair steps, and steps between them that reuse the matrices
            _backward(model, step)
            with torch.inference_mode(inference):
                opt.step()
        assert opt.diagnostics()["pairs_accepted"] > 0
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
