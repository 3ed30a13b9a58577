"""Atomic checkpoints under a real SIGKILL in the middle of the write: the reader sees the old
checkpoint, whole, and the stray temporary file is never taken for a checkpoint."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import BinaryIO

import pytest
import torch

from sgdlab.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from sgdlab.errors import CheckpointError


def _die_half_way(path: Path, payload: bytes) -> None:
    """In a child process: start replacing ``path``, then die by SIGKILL half-way through."""
    pid = os.fork()
    if pid == 0:  # the child writes half, flushes it to disk, and is killed
        def write(f: BinaryIO) -> None:
            f.write(payload[: len(payload) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        try:
            atomic_write(path, write)
        finally:
            os._exit(3)  # never reached: SIGKILL cannot be caught
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_a_write_killed_half_way_leaves_the_old_checkpoint_whole(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    old = {"step": 10, "w": torch.arange(1000.0)}
    save_checkpoint(old, path)
    before = path.read_bytes()
    newer = tmp_path / "newer.pt"
    save_checkpoint({"step": 20, "w": torch.zeros(1000)}, newer)

    _die_half_way(path, newer.read_bytes())

    assert path.read_bytes() == before
    state = load_checkpoint(path)
    assert state["step"] == 10 and torch.equal(state["w"], old["w"])
    strays = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(strays) == 1 and strays[0].name.startswith(".checkpoint.pt.")
    # The stray is the half-written file: unreadable, and named so that nothing looks for it.
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(strays[0])


def test_a_first_write_killed_half_way_leaves_no_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    _die_half_way(path, b"\x80" * 4096)
    assert not path.exists()
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(path)
