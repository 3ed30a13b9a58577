"""A run killed with SIGKILL after a checkpoint and resumed ends bit for bit like an
uninterrupted run: same parameters, same final loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from sgdlab.bench.runner import CHECKPOINT, MODEL, RESULT
from sgdlab.checkpoint import load_checkpoint

ARGS = [
    "train",
    "--workload",
    "logreg-breast-cancer",
    "--optimizer",
    "sgd",
    "--lr",
    "0.05",
    "--set",
    "momentum=0.9",
    "--steps",
    "30000",
    "--batch-size",
    "8",
    "--seed",
    "7",
    "--eval-every",
    "10000",
    "--json",
]


def _sgdlab(args: list[str], tmp: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "sgdlab.cli", *args, "--db", str(tmp / "r.db"), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_sigkill_then_resume_is_bit_for_bit(tmp_path: Path) -> None:
    full = _finish(_sgdlab([*ARGS, "--out", str(tmp_path / "full")], tmp_path))

    victim = _sgdlab(
        [*ARGS, "--out", str(tmp_path / "cut"), "--checkpoint-every", "2000"], tmp_path
    )
    run = tmp_path / "cut" / "run-0001"
    deadline = time.monotonic() + 120
    while not (run / CHECKPOINT).exists():
        assert victim.poll() is None, victim.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(0.3)  # let it run on past the checkpoint: that work is lost with the kill
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (run / RESULT).exists(), "the run finished before the kill; make it longer"
    killed_at = load_checkpoint(run / CHECKPOINT)["step"]
    assert 0 < killed_at < 30000

    resumed = _finish(
        _sgdlab(
            [*ARGS, "--out", str(tmp_path / "cut"), "--checkpoint-every", "2000", "--resume"],
            tmp_path,
        )
    )
    assert resumed["final_loss"] == full["final_loss"]
    assert resumed["metric_value"] == full["metric_value"]
    a = load_checkpoint(Path(str(full["out_dir"])) / MODEL)["model"]
    b = load_checkpoint(run / MODEL)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
