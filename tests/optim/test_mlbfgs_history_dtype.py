"""mL-BFGS's narrower history (``history_dtype``, issue S5): validated, stored in that dtype
with the Gram matrix and solves in the parameters', within bfloat16's rounding of the
full-precision step, and kept exactly through ``state_dict``."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from mlbfgs_toys import backward, batches, mlp

from sgdlab.optim.mlbfgs import MLBFGS

KW: dict[str, Any] = dict(lr=0.05, update_freq=2, history_size=3, pair_momentum=0.5)


def _blocks(opt: MLBFGS) -> list[dict[str, Any]]:
    return [s["mlbfgs_block"] for s in opt.state.values() if "mlbfgs_block" in s]


def _train(opt: MLBFGS, model: torch.nn.Module, data: list[Any]) -> torch.Tensor:
    for batch in data:
        backward(model, batch)
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(
    ("value", "message"),
    [(torch.float16, "float16"), ("int8", "int8"), (torch.int64, "int64")],
)
def test_bad_history_dtype_is_refused(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"Invalid history_dtype: .*{message}"):
        MLBFGS(mlp().parameters(), history_dtype=value)


def test_history_wider_than_the_parameters_is_refused() -> None:
    with pytest.raises(ValueError, match="Invalid history_dtype: torch.float64 is wider"):
        MLBFGS(mlp().float().parameters(), history_dtype=torch.float64)
    opt = MLBFGS(mlp().parameters(), history_dtype="torch.float32")  # float64 parameters
    assert opt.param_groups[0]["history_dtype"] is torch.float32


def test_bfloat16_history_is_the_float32_step_to_its_rounding() -> None:
    """Same model, same batches: the bfloat16 history is stored as such (the Gram matrix and
    gamma are not), moves the parameters within bfloat16's rounding of the float32 history's
    run, and not exactly as it (the option is not ignored)."""
    data = batches(3, 16)
    start = mlp().float()
    ends = {}
    for dtype in (None, "bfloat16"):
        model = copy.deepcopy(start)
        opt = MLBFGS(model.parameters(), history_dtype=dtype, **KW)
        ends[dtype] = _train(opt, model, [(x.float(), y.float()) for x, y in data])
        blocks = _blocks(opt)
        assert blocks and opt.diagnostics()["pairs_accepted"] >= 6 * len(blocks)
        expect = torch.float32 if dtype is None else torch.bfloat16
        assert all(b["pairs"].dtype == expect for b in blocks)
        assert all(b["gram"].dtype == b["gamma"].dtype == torch.float32 for b in blocks)
    theta0 = torch.cat([p.detach().flatten() for p in start.parameters()])
    moved = (ends[None] - theta0).norm()
    gap = (ends["bfloat16"] - ends[None]).norm()
    assert not torch.equal(ends["bfloat16"], ends[None])
    assert gap <= 2**-6 * moved, (gap, moved)  # bfloat16 keeps 8 bits


def test_bfloat16_history_round_trips_through_state_dict() -> None:
    data = [(x.float(), y.float()) for x, y in batches(4, 12)]
    model = mlp().float()
    twin = copy.deepcopy(model)
    opt = MLBFGS(model.parameters(), history_dtype=torch.bfloat16, **KW)
    _train(opt, model, data[:7])
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    _train(MLBFGS(twin.parameters(), **KW), twin, data[:1])  # a different trajectory so far
    twin.load_state_dict(model.state_dict())
    resumed = MLBFGS(twin.parameters(), **KW)  # the checkpoint's history_dtype wins, as torch's
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.param_groups[0]["history_dtype"] is torch.bfloat16
    assert all(b["pairs"].dtype == torch.bfloat16 for b in _blocks(resumed))
    assert torch.equal(_train(resumed, twin, data[7:]), _train(opt, model, data[7:]))


def test_a_checkpoint_from_before_the_options_loads() -> None:
    """Groups saved before ``variant`` and ``history_dtype`` existed resume as those runs
    were: our variant, the history in the parameters' dtype."""
    model = mlp()
    opt = MLBFGS(model.parameters(), **KW)
    _train(opt, model, batches(5, 5))
    state = copy.deepcopy(opt.state_dict())  # load_state_dict would share its tensors
    for group in state["param_groups"]:
        del group["history_dtype"], group["variant"]
    twin = copy.deepcopy(model)
    again = MLBFGS(twin.parameters(), **KW)
    again.load_state_dict(state)
    assert (again.param_groups[0]["history_dtype"], again.param_groups[0]["variant"]) == (
        None, "ours")
    assert torch.equal(_train(again, twin, batches(6, 2)), _train(opt, model, batches(6, 2)))


def test_bfloat16_parameters_resume_past_256_pairs_exactly() -> None:
    # torch's load_state_dict casts every state tensor to its parameter's dtype; bfloat16
    # holds integers exactly only to 256, so the ring's head (259 pairs written) and the
    # counters must come back from the checkpoint as they were saved, not as bfloat16 had them.
    def run(opt: MLBFGS, param: torch.nn.Parameter, steps: range) -> None:
        for step in steps:
            g = torch.Generator().manual_seed(step)
            noise = torch.randn(param.shape, generator=g)
            param.grad = (2.0 * param.detach().float() + 0.1 * noise).to(torch.bfloat16)
            opt.step()

    kwargs: dict[str, Any] = dict(update_freq=1, history_size=3, damping=(0.5, 2.0, 0.1))
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.bfloat16))
    opt = MLBFGS([param], **kwargs)
    run(opt, param, range(262))
    head = int(_blocks(opt)[0]["head"])
    assert head > 256 and float(torch.tensor(head).to(torch.bfloat16)) != head
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin = torch.nn.Parameter(param.detach().clone())
    resumed = MLBFGS([twin], **kwargs)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.diagnostics() == opt.diagnostics()
    run(opt, param, range(262, 266))
    run(resumed, twin, range(262, 266))
    assert torch.equal(param, twin)


def test_a_block_of_float32_and_float64_parameters_resumes_exactly() -> None:
    # The block's math (and its parameters' directions and heavy balls) run in float64, but
    # its state lives under a float32 parameter, to whose dtype torch's load_state_dict casts
    # it: the checkpoint's float64 values must come back as saved.
    def run(opt: MLBFGS, params: list[torch.nn.Parameter], steps: range) -> None:
        for step in steps:
            g = torch.Generator().manual_seed(step)
            for p in params:
                noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
                p.grad = 2.0 * p.detach() + (0.1 * noise).to(p.dtype)
            opt.step()

    kwargs: dict[str, Any] = dict(KW, blocks="size:100")
    torch.manual_seed(0)
    dtypes = (torch.float32, torch.float64, torch.float32)
    params = [torch.nn.Parameter(torch.randn(s, dtype=d))
              for s, d in zip([(5, 4), (5,), (3, 5)], dtypes, strict=True)]
    opt = MLBFGS(params, **kwargs)
    assert opt.blocks == [[0, 1, 2]]
    run(opt, params, range(9))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = MLBFGS(twins, **kwargs)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    run(opt, params, range(9, 14))
    run(resumed, twins, range(9, 14))
    assert all(torch.equal(a, b) for a, b in zip(params, twins, strict=True))
