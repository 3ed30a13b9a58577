"""A NaN or an infinity, from the data or from divergence, at any step: the run stops naming the
step, the culprit and the last good checkpoint (or, under ``skip``, the step is undone and
counted), and no checkpoint is ever written with a non-finite value in it."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sgdlab import cli
from sgdlab.checkpoint import load_checkpoint
from sgdlab.errors import ConfigError, DivergenceError
from sgdlab.run import train as runner
from sgdlab.run.config import TrainConfig
from sgdlab.run.finite import MAX_CONSECUTIVE_SKIPS, FiniteGuard, NonFinite
from sgdlab.run.store import ResultStore
from sgdlab.run.train import CHECKPOINT, EVENTS, MODEL, EpochSampler, train
from sgdlab.workloads import Workload, get_workload

BAD = 24  # the 0-based batch that holds a NaN: the 25th step
HPARAMS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.1},
    "adam": {"lr": 0.01},
    "lbfgs": {"lr": 0.5, "optimizer_options": {"max_iter": 3}},
    "mlbfgs": {"lr": 0.05},
}


def _config(tmp_path: Path, optimizer: str, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        workload="logreg-breast-cancer",
        optimizer=optimizer,
        steps=40,
        batch_size=16,
        seed=3,
        eval_every=20,
        checkpoint_every=10,
        db=tmp_path / "r.db",
        out=tmp_path / "out",
        progress=False,
    )
    base.update(HPARAMS[optimizer])
    base.update(kw)
    return TrainConfig(**base)


@dataclasses.dataclass
class _BadBatch(Workload):
    """A workload whose batch at one step holds ``value`` at ``(row, col)``: batches are a pure
    function of (seed, step), so that batch is recognised by its indices. The data set itself
    stays clean (evaluation reads it all)."""

    bad: tuple[int, ...] = ()
    row: int = 0
    col: int = 0
    value: float = math.nan

    def batch(
        self, idx: torch.Tensor, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().batch(idx, device)
        if tuple(idx.tolist()) == self.bad:
            x = x.clone()
            x[self.row, self.col] = self.value
        return x, y


def _bad_batch(workload: Workload, value: float, row: int = 5, col: int = 7) -> Workload:
    """``workload`` with ``value`` in batch BAD (seed 3, batch size 16), the 25th step."""
    bad = tuple(EpochSampler(workload.num_train, 16, seed=3).indices(BAD).tolist())
    fields = {f.name: getattr(workload, f.name) for f in dataclasses.fields(workload)}
    return _BadBatch(**fields, bad=bad, row=row, col=col, value=value)


def _poisoned(value: float = math.nan) -> Workload:
    return _bad_batch(get_workload("logreg-breast-cancer"), value)


class _SqrtModel(nn.Module):
    """Logistic regression plus sqrt(a * x0): at x0 = 0 the loss is finite, d/da is 0/0."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.a = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + torch.sqrt(self.a * x[:, :1])


def _sqrt_workload() -> Workload:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 4, generator=g) + 0.5
    y = (x.sum(1) > 4).long()
    clean = Workload("sqrt-toy", x, y, x[:64].clone(), y[:64].clone(), 2, _SqrtModel)
    return _bad_batch(clean, 0.0, row=0, col=0)  # finite data, but x0 = 0 in one sample


def _finite(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(_finite(v) for v in obj)
    return True


def _events(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / EVENTS).read_text().splitlines()]


def _record_checkpoints(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict[str, Any]]:
    """Keep a copy of every checkpoint the runner writes, by step."""
    saved: dict[int, dict[str, Any]] = {}
    real = runner.save_checkpoint

    def save(state: dict[str, Any], path: Path) -> None:
        if "optimizer" in state:
            saved[state["step"]] = _clone(state)
        real(state, path)

    monkeypatch.setattr(runner, "save_checkpoint", save)
    return saved


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clone(v) for v in obj]
    return obj


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_bad_batch_stops_the_run_at_its_step(
    tmp_path: Path, optimizer: str, value: float
) -> None:
    with pytest.raises(DivergenceError) as caught:
        train(_config(tmp_path, optimizer), workload=_poisoned(value))
    run = tmp_path / "out" / "run-0001"
    message = str(caught.value)
    assert "\n" not in message
    assert re.match(r"training diverged at step 25: the loss is (nan|inf) \(optimizer", message)
    assert message.endswith(f"last good checkpoint: {run / CHECKPOINT} (step 20)")
    on_disk = load_checkpoint(run / CHECKPOINT)
    assert on_disk["step"] == 20 and _finite(on_disk)
    assert not (run / MODEL).exists() and not (run / "result.json").exists()
    assert _events(run)[-1] == {
        "event": "diverged",
        "step": 25,
        "what": message.split(": ", 1)[1].split(" (optimizer")[0],
        "checkpoint": 20,
    }
    with ResultStore(tmp_path / "r.db") as store:
        (row,) = store.runs(status="diverged")
        assert row.steps_done == 24  # the 25th was not taken


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_a_huge_lr_stops_the_run_with_a_finite_checkpoint(tmp_path: Path, optimizer: str) -> None:
    # Adam moves each weight by about lr a step: finite for some steps, then the loss overflows.
    # L-BFGS overflows within a step, on its second evaluation, after moving the iterate.
    lr = {"adam": 1e36, "lbfgs": 1e30}[optimizer]
    with pytest.raises(DivergenceError, match=r"diverged at step (\d+): the loss is inf") as e:
        train(_config(tmp_path, optimizer, lr=lr, checkpoint_every=1))
    step = int(re.findall(r"at step (\d+)", str(e.value))[0])
    run = tmp_path / "out" / "run-0001"
    if step > 1:
        assert str(e.value).endswith(f"checkpoint: {run / CHECKPOINT} (step {step - 1})")
        assert _finite(load_checkpoint(run / CHECKPOINT))
    else:
        assert str(e.value).endswith("no checkpoint was written (see --checkpoint-every)")
        assert "(evaluation 2 of the step)" in str(e.value)
        assert not (run / CHECKPOINT).exists()


@pytest.mark.parametrize("optimizer", ["sgd", "mlbfgs"])
def test_a_nan_gradient_under_a_finite_loss_names_the_parameter(
    tmp_path: Path, optimizer: str
) -> None:
    config = _config(tmp_path, optimizer, workload="sqrt-toy", lr=0.01)
    with pytest.raises(
        DivergenceError,
        match=r"at step 25: the gradient of parameter 'a' has nan .* \(step 20\)$",
    ):
        train(config, workload=_sqrt_workload())


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "lbfgs", "mlbfgs"])
def test_skip_undoes_the_bad_step_and_counts_it(
    tmp_path: Path, optimizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = _record_checkpoints(monkeypatch)
    result = train(
        _config(tmp_path, optimizer, on_nonfinite="skip", checkpoint_every=1, steps=30),
        workload=_poisoned(),
    )
    assert result.skipped_steps == 1 and math.isfinite(result.final_loss)
    run = Path(result.out_dir)
    skips = [e for e in _events(run) if e["event"] == "skip"]
    assert skips == [{"event": "skip", "step": 25, "what": "the loss is nan", "in_a_row": 1}]
    for key in ("model", "optimizer", "scheduler", "rng"):  # step 25 changed nothing
        assert _same(saved[25][key], saved[24][key]), key
    assert not _same(saved[26]["model"], saved[25]["model"])  # and training went on
    assert all(_finite(s) for s in saved.values())
    with ResultStore(tmp_path / "r.db") as store:
        (row,) = store.runs()
        assert row.extra["skipped_steps"] == 1


def test_skip_restores_a_closure_optimizer_moved_within_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """L-BFGS at a huge lr: each step's second evaluation overflows after the first moved the
    iterate and filled the optimizer's state; the skip must put both back exactly, every
    time, and give up after MAX_CONSECUTIVE_SKIPS."""
    saved = _record_checkpoints(monkeypatch)
    config = _config(tmp_path, "lbfgs", lr=1e30, on_nonfinite="skip", checkpoint_every=1)
    with pytest.raises(
        DivergenceError,
        match=rf"at step {MAX_CONSECUTIVE_SKIPS}: the loss is inf \(evaluation 2 of the step\), "
        rf"{MAX_CONSECUTIVE_SKIPS} steps in a row skipped .*\(step {MAX_CONSECUTIVE_SKIPS - 1}\)$",
    ):
        train(config)
    first = get_workload("logreg-breast-cancer").make_model(3).state_dict()
    assert sorted(saved) == list(range(1, MAX_CONSECUTIVE_SKIPS))
    for step, state in saved.items():
        assert _same(state["model"], dict(first)), step
        assert state["optimizer"]["state"] == {}, step
        assert state["skipped_steps"] == state["consecutive_skips"] == step
    with ResultStore(tmp_path / "r.db") as store:
        assert store.runs(status="diverged")


def test_an_optimizer_that_makes_a_nan_never_checkpoints_it(tmp_path: Path) -> None:
    """Adam with eps=0 on a feature that is always 0 (and no L2): 0/0 puts a NaN in the
    weights at step 1 from a finite loss and finite gradients."""
    workload = get_workload("logreg-breast-cancer")
    x = workload.x_train.clone()  # type: ignore[union-attr]
    x[:, 3] = 0.0
    workload = dataclasses.replace(workload, x_train=x, l2=0.0)
    config = _config(tmp_path, "adam", optimizer_options={"eps": 0.0}, checkpoint_every=1)
    with pytest.raises(
        DivergenceError,
        match=r"at step 1: parameter 'linear.weight' has nan, found before writing its "
        r"checkpoint .*; no checkpoint was written",
    ):
        train(config, workload=workload)
    assert not (tmp_path / "out" / "run-0001" / CHECKPOINT).exists()


def test_resume_after_a_nan_stop_starts_from_the_last_good_checkpoint(tmp_path: Path) -> None:
    workload = _poisoned()
    reference = train(
        _config(tmp_path, "adam", out=tmp_path / "ref", on_nonfinite="skip"), workload=workload
    )
    with pytest.raises(DivergenceError, match=r"at step 25: .*\(step 20\)$"):
        train(_config(tmp_path, "adam"), workload=workload)
    # Resumed, with skip: steps 21 to 40 again from the step-20 checkpoint, 25 skipped.
    resumed = train(_config(tmp_path, "adam", resume=True, on_nonfinite="skip"), workload=workload)
    run = Path(resumed.out_dir)
    events = _events(run)
    assert [e["step"] for e in events if e["event"] == "resume"] == [20]
    assert [e["step"] for e in events if e["event"] == "skip"] == [25]
    assert not any(e["event"] == "diverged" for e in events)  # the log was cut at step 20
    assert resumed.skipped_steps == reference.skipped_steps == 1
    assert resumed.final_loss == reference.final_loss
    a = load_checkpoint(Path(reference.out_dir) / MODEL)["model"]
    b = load_checkpoint(run / MODEL)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with ResultStore(tmp_path / "r.db") as store:
        row = next(r for r in store.runs() if r.id == resumed.run_id)
        assert row.status == "finished" and row.extra["skipped_steps"] == 1


def test_the_cli_prints_one_error_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--workload", "logreg-breast-cancer", "--steps", "30", "--batch-size", "16"]
    args += ["--lr", "1e36", "--optimizer", "adam", "--checkpoint-every", "1"]
    args += ["--out", str(tmp_path / "out"), "--db", str(tmp_path / "r.db"), "--json"]
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    checkpoint = tmp_path / "out" / "run-0001" / CHECKPOINT
    step = load_checkpoint(checkpoint)["step"]
    assert re.fullmatch(
        rf"error: training diverged at step {step + 1}: the loss is inf \(optimizer adam, "
        rf"lr 1e\+36\); last good checkpoint: {re.escape(str(checkpoint))} \(step {step}\)",
        line,
    )
    assert cli.main([*args, "--on-nonfinite", "maybe"]) == 2
    assert capsys.readouterr().err == ("error: invalid on-nonfinite 'maybe'; choose stop or skip\n")


def test_the_guard_confirms_an_overflowed_sum_element_by_element() -> None:
    model = nn.Linear(2, 1)
    loss = model(torch.ones(1, 2)).sum()
    loss.backward()
    guard = FiniteGuard(model, torch.device("cpu"))
    assert guard.check(loss) == loss.item()
    model.weight.grad = torch.tensor([[3e38, 3e38]])  # finite, but its sum overflows
    assert guard.check(loss) == loss.item()
    model.weight.grad = torch.tensor([[1.0, -math.inf]])
    with pytest.raises(NonFinite, match="the gradient of parameter 'weight' has inf"):
        guard.check(loss)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_guard_reads_one_value_per_gradient_or_all_in_one_transfer(device: str) -> None:
    """On a GPU the loss and the gradients' sums come back in one transfer; the CPU adds
    floats. Only the device's type is read, so both paths run here on CPU tensors."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)).to(torch.bfloat16)
    loss = model(torch.ones(2, 3, dtype=torch.bfloat16)).float().sum()
    loss.backward()
    guard = FiniteGuard(model, torch.device(device))
    assert guard.check(loss) == loss.item()
    model[1].bias.grad = torch.tensor([math.nan], dtype=torch.bfloat16)
    with pytest.raises(NonFinite, match="the gradient of parameter '1.bias' has nan"):
        guard.check(loss)
    with pytest.raises(NonFinite, match="the loss is inf"):
        guard.check(torch.tensor(math.inf))


def test_bad_policy_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid on-nonfinite 'ignore'; choose stop or skip"):
        train(_config(tmp_path, "sgd", on_nonfinite="ignore"))
