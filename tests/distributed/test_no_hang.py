"""No hangs, and elastic restarts, with real dead and stalled ranks.

* A rank killed with SIGKILL ends the run at once: its peers' collectives fail on the closed
  connection, and the launcher reports which rank died.
* A rank stopped with SIGSTOP (alive, silent) ends the run once the collective timeout passes:
  its peers fail with "no answer from a peer within N s", the launcher kills the stalled rank
  and nothing is left running.
* Under ``torchrun --max-restarts 1`` a rank killed mid-run is restarted with its peers, and the
  run continues from the newest checkpoint to the parameters of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from faults import alive, complete_cuts, kill, tagged, wait_until

from sgdlab.checkpoint import load_checkpoint
from sgdlab.distributed.launch import RankFailure
from sgdlab.run.config import DistConfig
from sgdlab.run.dist import run_dist

TORCHRUN = Path(sys.executable).with_name("torchrun")


def slow_run(root: Path, **kw: Any) -> DistConfig:
    return DistConfig(algo="overlap", world_size=2, workload="logreg-breast-cancer", lr=0.05,
                      batch_size=8, steps=2000, seed=1, latency_ms=15.0,
                      checkpoint_dir=str(root), checkpoint_every=20, **kw)


def _run_in_thread(config: DistConfig) -> tuple[threading.Thread, list[Any], list[int]]:
    """Start the run; returns its thread, a box for its outcome and the ranks' pids, once
    the first checkpoint shows the ranks are training."""
    box: list[Any] = []
    pids: list[int] = []

    def run() -> None:
        try:
            box.append(run_dist(config, {"on_start": pids.extend}, timeout_s=240))
        except BaseException as exc:  # noqa: B036 - handed to the test
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: complete_cuts(Path(config.checkpoint_dir)), 60, "the first checkpoint")
    return thread, box, pids


@pytest.mark.slow
def test_a_dead_rank_ends_the_run_at_once_naming_it(tmp_path: Path) -> None:
    thread, box, ranks = _run_in_thread(slow_run(tmp_path / "ck", collective_timeout_s=60.0))
    t0 = time.monotonic()
    kill([ranks[1]])
    thread.join(30)
    elapsed = time.monotonic() - t0
    assert not thread.is_alive(), "the run outlived a dead rank by 30 s"
    assert elapsed < 15, f"{elapsed:.1f} s to notice a dead rank (collective timeout is 60 s)"
    exc = box[0]
    assert isinstance(exc, RankFailure)
    message = str(exc)
    assert "\n" not in message
    assert "rank 1 was killed by SIGKILL" in message
    assert "a peer rank died" in message
    assert re.search(r"the newest complete checkpoint is \S+/step-\d{8}: add --resume", message)
    assert not any(alive(p) for p in ranks)


@pytest.mark.slow
def test_a_stalled_rank_ends_the_run_within_the_collective_timeout(tmp_path: Path) -> None:
    timeout = 4.0
    thread, box, ranks = _run_in_thread(slow_run(tmp_path / "ck", collective_timeout_s=timeout))
    t0 = time.monotonic()
    kill([ranks[1]], signal.SIGSTOP)  # alive but silent: no connection closes
    thread.join(60)
    elapsed = time.monotonic() - t0
    assert not thread.is_alive(), "the run outlived a stalled rank by 60 s"
    grace = 5.0  # launch()'s default: how long the others get once one rank failed
    assert timeout <= elapsed + 0.5 and elapsed < timeout + grace + 10, elapsed
    exc = box[0]
    assert isinstance(exc, RankFailure)
    assert f"no answer from a peer within {timeout:g} s" in str(exc)
    assert "rank 0" in str(exc)
    assert not any(alive(p) for p in ranks), "the stalled rank was left behind"


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside python")
def test_torchrun_restarts_a_killed_rank_and_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    common = ["--algo", "overlap", "--world-size", "2", "--workload", "logreg-breast-cancer",
              "--lr", "0.05", "--batch-size", "8", "--steps", "240", "--seed", "4",
              "--eval-every", "80", "--json"]
    reference = subprocess.run(
        [sys.executable, "-m", "sgdlab.cli", "dist", *common,
         "--checkpoint-dir", str(tmp_path / "ref")],
        capture_output=True, text=True, timeout=120)
    assert reference.returncode == 0, reference.stderr

    tag = uuid.uuid4().hex
    root = tmp_path / "ck"
    env = {**os.environ, "SGDLAB_TEST_TAG": tag}
    elastic = subprocess.Popen(
        [str(TORCHRUN), "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
         "--max-restarts", "1", "-m", "sgdlab.cli", "dist", *common, "--latency-ms", "15",
         "--checkpoint-dir", str(root), "--checkpoint-every", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: complete_cuts(root), 90, "the first checkpoint")
        victims = tagged(tag, RANK="1", TORCHELASTIC_RESTART_COUNT="0")
        assert len(victims) == 1, victims
        kill(victims)
        out, err = elastic.communicate(timeout=180)
    finally:
        if elastic.poll() is None:
            elastic.kill()
    assert elastic.returncode == 0, [ln for ln in err.splitlines() if "error" in ln.lower()][-8:]
    assert tagged(tag, RANK="1", TORCHELASTIC_RESTART_COUNT="1") == []  # all ended
    result = json.loads((root / "result.json").read_text())
    assert result["resumed_from"] >= 30, "the restarted ranks did not resume"
    line = json.loads(out.strip().splitlines()[-1])
    assert line["final_loss"] == json.loads(reference.stdout.strip().splitlines()[-1])["final_loss"]
    a = load_checkpoint(tmp_path / "ref" / "model.pt")["model"]
    b = load_checkpoint(root / "model.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    shutil.rmtree(root)
