"""Real faults for the reliability tests: find rank processes, wait for a checkpoint, kill.

Rank processes are found through /proc: those ``launch`` starts run
``python -m sgdlab.distributed.launch <spec> <rank>``; those ``torchrun`` starts carry its
``RANK`` and ``TORCHELASTIC_RESTART_COUNT`` and whatever tag the test put in their environment.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    # pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis
    return int(stat.rsplit(")", 1)[1].split()[1]) if ")" in stat else -1


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def launched_ranks(parent: int) -> dict[int, int]:
    """{rank: pid} of the live ranks ``launch`` started in process ``parent``."""
    out = {}
    for pid in _pids():
        argv = _read(f"/proc/{pid}/cmdline").split(b"\0")
        if b"sgdlab.distributed.launch" in argv and _ppid(pid) == parent:
            out[int(argv[-2] if argv[-1] == b"" else argv[-1])] = pid
    return out


def tagged(tag: str, **env: str) -> list[int]:
    """Live processes whose environment holds ``SGDLAB_TEST_TAG=tag`` and every ``env`` pair."""
    want = [f"SGDLAB_TEST_TAG={tag}".encode()] + [f"{k}={v}".encode() for k, v in env.items()]
    out = []
    for pid in _pids():
        environ = _read(f"/proc/{pid}/environ").split(b"\0")
        if all(w in environ for w in want):
            out.append(pid)
    return out


def alive(pid: int) -> bool:
    state = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return bool(state) and state.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(ready: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def complete_cuts(root: Path) -> list[int]:
    """Steps of the complete checkpoints under ``root`` (their COMPLETE markers)."""
    return sorted(int(p.parent.name[5:]) for p in root.glob("step-*/COMPLETE"))


def kill(pids: list[int], sig: signal.Signals = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
