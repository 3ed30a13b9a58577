"""Distributed crash and resume with real SIGKILLs: one rank, or every rank and the launcher,
killed after a checkpoint; ``--resume`` then ends with the parameters of an uninterrupted run.

The injected latency only slows the victims down (so the kill lands mid-run); it changes no
number, and the uninterrupted reference runs without it.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from faults import complete_cuts, kill, launched_ranks, wait_until

from sgdlab.checkpoint import load_checkpoint
from sgdlab.distributed import ALGORITHMS
from sgdlab.distributed.launch import RankFailure
from sgdlab.errors import CheckpointError, ConfigError
from sgdlab.run.config import DistConfig
from sgdlab.run.dist import run_dist, run_dist_many
from sgdlab.run.rank import rank_entry

STEPS, EVERY = 240, 30
SLOW = {"latency_ms": 15.0}  # per collective: makes the victim run last seconds


def config(algo: str, root: Path, **kw: Any) -> DistConfig:
    kw = {"world_size": 2, "workload": "logreg-breast-cancer", "lr": 0.05, "batch_size": 8,
          "tau": 2, "steps": STEPS, "seed": 3, "eval_every": 80,
          "optimizer_options": {"momentum": 0.9}, "checkpoint_dir": str(root), **kw}
    return DistConfig(algo=algo, **kw)


def same_model(a: Path, b: Path) -> None:
    ma, mb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert ma.keys() == mb.keys()
    for key in ma:
        assert torch.equal(ma[key], mb[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every algorithm uninterrupted, in one set of rank processes."""
    base = tmp_path_factory.mktemp("reference")
    results = run_dist_many([config(a, base / a) for a in tuple(ALGORITHMS)], timeout_s=120)
    return {a: (base / a / "model.pt", r) for a, r in zip(tuple(ALGORITHMS), results, strict=True)}


def _start(target: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(target(*args))
        except BaseException as exc:  # noqa: B036 - handed to the test
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


@pytest.mark.slow
@pytest.mark.parametrize("algo", tuple(ALGORITHMS))
def test_sigkill_one_rank_then_resume_matches_uninterrupted(
    algo: str, tmp_path: Path, reference: dict[str, tuple[Path, dict[str, Any]]]
) -> None:
    root = tmp_path / "ck"
    victim = config(algo, root, checkpoint_every=EVERY, **SLOW)
    pids: list[int] = []
    thread, box = _start(run_dist, victim, {"on_start": pids.extend}, 120.0)
    wait_until(lambda: complete_cuts(root), 60, "the first complete checkpoint")
    kill([pids[1]])
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(box[0], RankFailure), box[0]
    killed_at = max(complete_cuts(root))
    assert killed_at < STEPS and not (root / "model.pt").exists(), "finished before the kill"

    resumed = run_dist(dataclasses.replace(victim, resume=True), timeout_s=120)
    assert resumed["resumed_from"] >= EVERY
    model, full = reference[algo]
    same_model(model, root / "model.pt")
    assert resumed["final_loss"] == full["final_loss"]
    assert resumed["metric_value"] == full["metric_value"]
    assert [e["step"] for e in resumed["evaluations"]] == [e["step"] for e in full["evaluations"]]


@pytest.mark.slow
def test_sigkill_every_rank_and_the_launcher_then_cli_resume(
    tmp_path: Path, reference: dict[str, tuple[Path, dict[str, Any]]]
) -> None:
    root = tmp_path / "ck"
    args = [sys.executable, "-m", "sgdlab.cli", "dist", "--algo", "overlap", "--world-size", "2",
            "--workload", "logreg-breast-cancer", "--lr", "0.05", "--batch-size", "8",
            "--steps", str(STEPS), "--seed", "3", "--eval-every", "80", "--set", "momentum=0.9",
            "--checkpoint-dir", str(root), "--checkpoint-every", str(EVERY),
            "--latency-ms", "15", "--json"]
    cli = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: complete_cuts(root), 60, "the first complete checkpoint")
    ranks = wait_until(lambda: launched_ranks(cli.pid), 10, "the rank processes")
    assert isinstance(ranks, dict) and len(ranks) == 2
    kill([cli.pid, *ranks.values()])  # a power cut, as far as this run can tell
    cli.communicate(timeout=30)
    assert cli.returncode == -signal.SIGKILL
    assert not (root / "model.pt").exists(), "finished before the kill"

    # A fresh run must not take over the folder; a resume must.
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [again.stderr.strip()]
    assert "already holds checkpoints" in again.stderr
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    model, full = reference["overlap"]
    same_model(model, root / "model.pt")
    assert line["final_loss"] == full["final_loss"]


def test_a_half_written_cut_is_never_picked_up(
    tmp_path: Path, reference: dict[str, tuple[Path, dict[str, Any]]]
) -> None:
    """Rank 0 wrote its part of the newest cut and rank 1 did not (killed while writing): the
    resume takes the cut before it, and still ends where the uninterrupted run ends."""
    root = tmp_path / "ck"
    first = config("cocod", root, checkpoint_every=EVERY, steps=90)
    run_dist(first, timeout_s=120)
    newest = max(complete_cuts(root))
    assert newest == 60
    (root / "step-00000060" / "rank-1.pt").unlink()
    (root / "step-00000060" / "COMPLETE").unlink()
    (root / "model.pt").unlink()
    # A stray temp file of an interrupted atomic write is ignored as well.
    (root / "step-00000060" / ".rank-1.pt.abc.tmp").write_bytes(b"\x80half")
    resumed = run_dist(dataclasses.replace(first, resume=True, steps=STEPS), timeout_s=120)
    assert resumed["resumed_from"] == 30
    same_model(reference["cocod"][0], root / "model.pt")


def test_resume_refuses_another_configuration_and_an_empty_folder(tmp_path: Path) -> None:
    """One rank in this process (a world of 1 needs no group): the checks are the same."""
    root = tmp_path / "ck"
    one = config("local", root, world_size=1, checkpoint_every=EVERY, steps=60)
    rank_entry(0, 1, one)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        rank_entry(0, 1, one)
    with pytest.raises(CheckpointError, match="belongs to another configuration"):
        rank_entry(0, 1, dataclasses.replace(one, lr=0.1, resume=True))
    with pytest.raises(CheckpointError, match="nothing to resume"):
        rank_entry(0, 1, config("local", tmp_path / "empty", world_size=1, resume=True))
    with pytest.raises(ConfigError, match="need --checkpoint-dir"):
        dataclasses.replace(one, checkpoint_dir="", resume=True).validate()
    extended = rank_entry(0, 1, dataclasses.replace(one, resume=True, steps=90))
    assert extended["resumed_from"] == 30 and extended["steps"] == 90
