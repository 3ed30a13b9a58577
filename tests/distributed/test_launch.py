"""The launcher: results in rank order, the testbed's hooks (argv wrapper, per-rank
environment), and failures that end the run with a message instead of a hang; and its security:
no file it reads can run code, and a local launch listens on loopback only (real sockets)."""

from __future__ import annotations

import dataclasses
import glob
import io
import ipaddress
import json
import os
import pickle
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from sgdlab.distributed.launch import RankFailure, free_port, launch

# The package exports the function ``launch``, which hides the module of the same name.
launch_module = sys.modules["sgdlab.distributed.launch"]

pytestmark = pytest.mark.timeout(120)


def test_results_come_back_in_rank_order_through_the_hooks(run_ranks: Any) -> None:
    def wrap(rank: int, argv: list[str]) -> list[str]:
        # What the testbed does with `ip netns exec <ns>`: run the same argv under a prefix.
        return ["env", f"SGDLAB_WRAPPED=ns{rank}", *argv]

    env = [{"SGDLAB_TEST_ENV": f"e{r}"} for r in range(2)]
    out = run_ranks(2, "echo", {"k": 1}, env_per_rank=env, wrap=wrap)
    assert [r["rank"] for r in out] == [0, 1]
    assert all(r["world_size"] == 2 and r["payload"] == {"k": 1} for r in out)
    assert [r["env"] for r in out] == ["e0", "e1"]
    assert [r["wrapped"] for r in out] == ["ns0", "ns1"]
    assert all(r["threads"] == 1 for r in out)


def test_a_rank_that_raises_fails_the_run_naming_it(run_ranks: Any) -> None:
    t0 = time.monotonic()
    with pytest.raises(RankFailure, match=r"rank 1 failed .*rank one broke on purpose"):
        run_ranks(2, "fail_on_rank_1", timeout_s=60)
    assert time.monotonic() - t0 < 40  # the grace period, not the run's timeout


@pytest.mark.slow
def test_a_hung_rank_is_stopped_at_the_timeout(run_ranks: Any) -> None:
    t0 = time.monotonic()
    # Rank 0 may not even have finished starting on a loaded machine; rank 1 never finishes.
    with pytest.raises(RankFailure, match=r"rank (0, )?1 still running after 5 s \(hung\?\)"):
        run_ranks(2, "hang_on_rank_1", timeout_s=5)
    assert time.monotonic() - t0 < 12


def test_bad_arguments_raise_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="Invalid world_size: 0"):
        launch(0, "m:f")
    with pytest.raises(ValueError, match="Invalid target"):
        launch(1, "no_function_here")
    with pytest.raises(ValueError, match="Invalid env_per_rank"):
        launch(2, "m:f", env_per_rank=[{}])


def test_a_function_target_is_named_by_its_module_and_checked() -> None:
    from sgdlab.run.dist import rank_entry_dicts

    assert launch_module.target_name(rank_entry_dicts) == "sgdlab.run.dist:rank_entry_dicts"
    assert launch_module.target_name(free_port) == "sgdlab.distributed.launch:free_port"

    def nested(rank: int, world_size: int, payload: Any) -> None:
        return None

    for fn in (nested, lambda rank, world_size, payload: None):
        with pytest.raises(ValueError, match="Invalid target: .*module-level function"):
            launch(1, fn)
    with pytest.raises(ValueError, match="Invalid target"):
        launch(1, 3)  # type: ignore[arg-type]


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert 0 < port < 65536 and sys.platform


# --- no file the launcher reads can run code ----------------------------------------------------

SECURITY = Path(__file__).with_name("rank_programs_security.py")


class Planted:
    """Unpickling this runs ``exec``, which creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def planted_bytes(marker: Path, kind: str) -> bytes:
    if kind == "pickle":
        return pickle.dumps(Planted(marker), protocol=2)  # what torch.load reads as a legacy file
    buffer = io.BytesIO()
    torch.save({"rank": 0, "x": Planted(marker)}, buffer)  # a torch file whose pickle is hostile
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_result_replaced_by_a_hostile_pickle_is_refused_unrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_ranks: Any, kind: str
) -> None:
    live = tmp_path / "live"
    pickle.loads(planted_bytes(live, "pickle"))
    assert live.exists(), "the planted payload runs under a plain unpickler"
    marker, seen = tmp_path / "marker", {}
    watch = launch_module._watch

    def watch_then_tamper(procs: Any, workdir: Path, *args: Any) -> None:
        watch(procs, workdir, *args)  # the ranks have finished and written their results
        seen["mode"] = stat.S_IMODE(workdir.stat().st_mode)
        seen["files"] = sorted(p.name for p in workdir.iterdir() if p.suffix != ".log")
        seen["spec"] = json.loads((workdir / "spec.json").read_text())
        (workdir / "result-0.pt").write_bytes(planted_bytes(marker, kind))

    monkeypatch.setattr(launch_module, "_watch", watch_then_tamper)
    with pytest.raises(RankFailure, match=r"rank 0's result is not a weights_only torch file: "
                                          r"Unsupported global: GLOBAL (builtins\.)?exec "):
        run_ranks(1, "echo", {"k": 1})
    assert not marker.exists()
    assert seen["mode"] == 0o700
    assert seen["files"] == ["payload.pt", "result-0.pt", "spec.json"]
    assert set(seen["spec"]) == {"target", "world_size", "addr", "port", "collective_timeout_s"}


def test_a_result_only_pickle_could_carry_fails_the_run_in_one_line() -> None:
    with pytest.raises(RankFailure, match=r"rank 0 failed with exit code 1: ValueError: Invalid "
                                          r"result of rank 0: Unsupported global: GLOBAL numpy"):
        launch(1, f"{SECURITY}:numpy_result", timeout_s=60)


@dataclasses.dataclass
class _Config:
    lr: float = 0.1


@pytest.mark.parametrize("payload", [_Config(), {"x": __import__("numpy").zeros(2)}, print])
def test_a_payload_only_pickle_could_carry_is_refused_before_anything_starts(
    payload: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch_module, "_start", lambda *a: pytest.fail("a rank was started"))
    with pytest.raises(ValueError, match=r"Invalid payload: .*convert a dataclass with "
                                         r"dataclasses\.asdict"):
        launch(2, "m:f", payload)
    # Converted at the boundary, the same configuration goes through.
    assert launch_module._safe_loads(
        launch_module._safe_dumps(dataclasses.asdict(_Config()), "payload"), "payload"
    ) == {"lr": 0.1}


# --- a local launch listens on loopback only ------------------------------------------------------


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN that process ``pid`` holds open."""
    inodes = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: TCP_LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)  # 32-bit words in host byte order
            raw = b"".join(
                int.from_bytes(raw[i:i + 4], sys.byteorder).to_bytes(4, "big")
                for i in range(0, len(raw), 4)
            )
            found.append((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


def hostname_off_loopback(tmp_path: Path) -> Any:
    """A ``wrap`` that runs a rank where the host name resolves to this host's non-loopback
    address (its own UTS and mount namespaces, an /etc/hosts bound over the real one): where
    gloo, left to itself, listens on that address. Root only; skips elsewhere, saying why."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        pytest.skip("needs root with unshare and ip: a host name that resolves off loopback")
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"],
                         capture_output=True, text=True, check=False).stdout.split()
    address = next((out[i + 1].split("/")[0] for i, w in enumerate(out[:-1]) if w == "inet"),
                   None)
    probe = subprocess.run(["unshare", "--uts", "--mount", "true"], capture_output=True,
                           check=False)
    if address is None or probe.returncode != 0:
        pytest.skip("no non-loopback IPv4 address, or unshare is not permitted here")
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{address} sgdlab-off-loopback\n")
    script = 'mount --bind "$0" /etc/hosts && hostname sgdlab-off-loopback && exec "$@"'
    return lambda rank, argv: ["unshare", "--uts", "--mount", "sh", "-c", script, str(hosts),
                               *argv]


@pytest.mark.parametrize("hostname", ["as-is", "off-loopback"])
def test_every_socket_a_local_launch_listens_on_is_on_loopback(
    tmp_path: Path, hostname: str
) -> None:
    wrap = hostname_off_loopback(tmp_path) if hostname == "off-loopback" else None
    folder, port, box = tmp_path / "hold", free_port(), {}
    folder.mkdir()

    def run() -> None:
        try:
            box["out"] = launch(2, f"{SECURITY}:hold_after_init", {"dir": str(folder)},
                                wrap=wrap, port=port, timeout_s=60, collective_timeout_s=30,
                                grace_s=2)
        except BaseException as exc:  # noqa: B036 - reported by the assertion below
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 45
        while len(list(folder.glob("pid-*"))) < 2:  # both ranks in the group, holding it open
            assert thread.is_alive() and time.monotonic() < deadline, box
            time.sleep(0.05)
        sockets = {r: listening_sockets(int((folder / f"pid-{r}").read_text())) for r in (0, 1)}
    finally:
        (folder / "go").write_text("")
        thread.join(70)
    assert box.get("out") == [0, 1], box
    assert all(ipaddress.ip_address(a).is_loopback for s in sockets.values() for a, _ in s), sockets
    assert ("127.0.0.1", port) in sockets[0], sockets  # the rendezvous store, on rank 0
    assert sockets[1], sockets  # gloo's own listener: what each rank's peers connect to
