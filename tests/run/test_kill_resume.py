"""A run killed with SIGKILL after a checkpoint and resumed ends bit for bit like an
uninterrupted run (same parameters, same final loss), for every optimizer in the registry.

Each case runs three real ``sgdlab train`` processes: the uninterrupted run, a victim killed
with SIGKILL, and ``--resume``. They are forked from the test process (each child calls
``sgdlab.cli.main`` with one torch thread and leaves with ``os._exit``), which spares a fresh
interpreter and torch import per process; one test does the same with fresh interpreters.

The victim is slowed a little each step and parked before its last steps, so the kill lands
after its first checkpoint and before it ends whatever the machine's load; both are asserted.
Parking changes only the clock, never a number.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sgdlab import cli
from sgdlab.checkpoint import load_checkpoint
from sgdlab.errors import CheckpointError
from sgdlab.optim import optimizer_names
from sgdlab.optim.registry import get_spec, peer_names
from sgdlab.run.train import CHECKPOINT, EVENTS, MODEL, RESULT, EpochSampler

STEPS, EVERY, PARK_AT = 40, 10, 34  # the victim waits at step 35 (of 40) to be killed
BASE = ["train", "--workload", "logreg-breast-cancer", "--batch-size", "8", "--seed", "7"]
BASE += ["--steps", str(STEPS), "--eval-every", "20", "--threads", "1", "--json"]

# Hyperparameters that train the tiny workload in 40 steps; any other name gets lr 0.01.
# L-BFGS is capped at 3 evaluations a step: its default 20 buys nothing here but time.
HPARAMS: dict[str, list[str]] = {
    "sgd": ["--lr", "0.05", "--set", "momentum=0.9"],
    "lbfgs": ["--lr", "0.5", "--set", "max_iter=3"],
    "mlbfgs": ["--lr", "0.05"],
    "prox-sgd": ["--lr", "0.05", "--set", "window=4"],
    "prox-adam": ["--lr", "0.01", "--set", "window=4"],
}

# Peers through pytorch_optimizer: a few by default (all with SGDLAB_TEST_ALL_PEERS=1, slow):
# one that keeps plain tensors, one with slow weights (Lookahead), one schedule-free, and one
# that keeps a deque in its state, which a weights_only checkpoint cannot hold.
PEER_SAMPLE = ("peer:adabelief", "peer:ranger", "peer:schedulefreeadamw", "peer:adashift")
# Whose state a checkpoint cannot hold (read with weights_only=True): the runner refuses them
# at their first checkpoint instead of writing one that fails on --resume.
PEER_STATE_NOT_LOADABLE = {
    "peer:adashift": "keeps a collections.deque in its state",
    "peer:conda": "keeps GaLoreProjector objects in its state",
    "peer:scalableshampoo": "keeps PreConditioner and SGDGraft objects in its state",
    "peer:scion": "keeps an LMONorm object in its param groups",
    "peer:scionlight": "keeps an LMONorm object in its param groups",
}


@pytest.fixture(scope="module", autouse=True)
def _imports_paid_once() -> None:
    """Pay in this process, once, the lazy imports every child would otherwise pay (torch's
    compiler stack on the first optimizer built, pytorch_optimizer, the workload's loader):
    over 2 s a child on our machines. Nothing here changes what a child computes."""
    from sgdlab.optim import load_optimizer
    from sgdlab.report import tables  # noqa: F401  # what `train` imports to print
    from sgdlab.workloads import get_workload

    get_workload("logreg-breast-cancer")
    for case in _cases():
        name = str(case.values[0])  # type: ignore[attr-defined]
        try:
            load_optimizer(name, [torch.nn.Parameter(torch.zeros(1))], lr=0.01)
        except Exception:  # the test itself says why it cannot be built
            pass


def _cases() -> list[object]:
    """Every registered optimizer, the proximal wrapper around each of torch's, and peers."""
    names = optimizer_names()
    names += [f"prox:{n}" for n in names if get_spec(n).family == "torch"]
    peers = peer_names()
    if os.environ.get("SGDLAB_TEST_ALL_PEERS") != "1":
        peers = [p for p in PEER_SAMPLE if p in peers]
    cases: list[object] = []
    for name in names + peers:
        marks = []
        if name in PEER_STATE_NOT_LOADABLE:
            reason = f"pytorch_optimizer's {name[5:]} {PEER_STATE_NOT_LOADABLE[name]}"
            marks.append(pytest.mark.xfail(raises=CheckpointError, strict=True, reason=reason))
        cases.append(pytest.param(name, marks=marks, id=name))
    return cases


def _args(name: str, out: Path, *extra: str) -> list[str]:
    opt = HPARAMS.get(name.removeprefix("prox:"), ["--lr", "0.01"])
    return [*BASE, "--optimizer", name, *opt, "--out", str(out), "--db", str(out / "r.db"), *extra]


def _park_each_step() -> None:
    """In the victim: 2 ms a step, and wait at step PARK_AT for the kill (up to a minute)."""
    real = EpochSampler.indices

    def slowed(self: EpochSampler, step: int) -> torch.Tensor:
        time.sleep(60 if step == PARK_AT else 0.002)
        return real(self, step)

    EpochSampler.indices = slowed  # type: ignore[method-assign]  # the child's copy only


_FORKED: list[int] = []


@pytest.fixture(autouse=True)
def _no_child_left() -> Iterator[None]:
    """A failed assertion must not leave a parked victim behind: kill our own children."""
    yield
    while _FORKED:
        pid = _FORKED.pop()
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # reaped already


def _fork(args: list[str], logs: Path, victim: bool = False) -> int:
    """Run ``sgdlab <args>`` in a forked child; its stdout and stderr go to ``logs.*``."""
    pid = os.fork()
    if pid:
        _FORKED.append(pid)
        return pid
    code = 70
    try:  # the child: never return into pytest
        with open(f"{logs}.out", "w") as out, open(f"{logs}.err", "w") as err:
            sys.stdout, sys.stderr = out, err
            torch.set_num_threads(1)
            if victim:
                _park_each_step()
            try:
                code = cli.main(args)
            except BaseException:
                traceback.print_exc()
            out.flush()
            err.flush()
    finally:
        os._exit(code)


def _wait(pid: int, timeout: float = 120.0) -> int:
    """The child's wait status; a child still alive after ``timeout`` s is killed (fail)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"sgdlab train (pid {pid}) still running after {timeout:.0f} s")
        time.sleep(0.005)


def _result(pid: int, logs: Path) -> dict[str, object]:
    status = _wait(pid)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, Path(f"{logs}.err").read_text()
    return json.loads(Path(f"{logs}.out").read_text().strip().splitlines()[-1])


def _model(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / MODEL)["model"]


@pytest.mark.parametrize("name", _cases())
def test_sigkill_then_resume_is_bit_for_bit(name: str, tmp_path: Path) -> None:
    full_pid = _fork(_args(name, tmp_path / "full"), tmp_path / "full")
    cut = tmp_path / "cut"
    cut_args = _args(name, cut, "--checkpoint-every", str(EVERY))
    victim = _fork(cut_args, tmp_path / "victim", victim=True)
    status = _wait(full_pid)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        os.kill(victim, signal.SIGKILL)
        _wait(victim)
        err = Path(f"{tmp_path}/full.err").read_text().strip() or f"wait status {status}"
        if name.startswith("peer:") and name not in PEER_SAMPLE:  # SGDLAB_TEST_ALL_PEERS=1
            pytest.skip(f"{name} does not train this workload as is: {err.splitlines()[-1]}")
        pytest.fail(f"the uninterrupted run failed: {err}")
    full = json.loads(Path(f"{tmp_path}/full.out").read_text().strip().splitlines()[-1])

    run = cut / "run-0001"
    deadline = time.monotonic() + 60
    while not (run / CHECKPOINT).exists():
        done, status = os.waitpid(victim, os.WNOHANG)
        if done:  # it ended without a checkpoint: an error (say, refused optimizer state)
            _raise_child_error(status, tmp_path / "victim")
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.002)
    time.sleep((zlib.crc32(name.encode()) % 16) / 1000)  # kill at varied points of a step
    os.kill(victim, signal.SIGKILL)
    status = _wait(victim)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not (run / RESULT).exists(), "the victim finished before the kill"
    killed_at = load_checkpoint(run / CHECKPOINT)["step"]
    assert EVERY <= killed_at < STEPS

    resumed = _result(_fork([*cut_args, "--resume"], tmp_path / "resumed"), tmp_path / "resumed")
    events = [json.loads(x) for x in (run / EVENTS).read_text().splitlines()]
    assert {"event": "resume", "step": killed_at, "run_id": resumed["run_id"]} in events
    assert resumed["final_loss"] == full["final_loss"]
    assert resumed["metric_value"] == full["metric_value"]
    a, b = _model(Path(str(full["out_dir"]))), _model(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _raise_child_error(status: int, logs: Path) -> None:
    err = Path(f"{logs}.err").read_text().strip()
    line = err.splitlines()[-1] if err else f"wait status {status}"
    if "checkpoint cannot hold" in line:
        raise CheckpointError(line.removeprefix("error: "))
    pytest.fail(f"the victim ended before its first checkpoint: {line}")


def test_sigkill_then_resume_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """The same, resumed by ``python -m sgdlab.cli``: nothing inherited from the killed run."""
    cut_args = _args("adam", tmp_path / "cut", "--checkpoint-every", str(EVERY))
    full_pid = _fork(_args("adam", tmp_path / "full"), tmp_path / "full")
    victim = _fork(cut_args, tmp_path / "victim", victim=True)
    run = tmp_path / "cut" / "run-0001"
    deadline = time.monotonic() + 60
    while not (run / CHECKPOINT).exists():
        assert not os.waitpid(victim, os.WNOHANG)[0], Path(f"{tmp_path}/victim.err").read_text()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.002)
    os.kill(victim, signal.SIGKILL)
    status = _wait(victim)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not (run / RESULT).exists()

    proc = subprocess.run(
        [sys.executable, "-m", "sgdlab.cli", *cut_args, "--resume"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    resumed = json.loads(proc.stdout.strip().splitlines()[-1])
    full = _result(full_pid, tmp_path / "full")
    assert resumed["final_loss"] == full["final_loss"]
    a, b = _model(Path(str(full["out_dir"]))), _model(run)
    for key in a:
        assert torch.equal(a[key], b[key]), key
