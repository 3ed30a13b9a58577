"""Start ``world_size`` ranks as processes, gather their results, and never hang.

:func:`launch` is the one way sgdlab starts ranks on this host (``sgdlab dist``, the benchmark,
the tests). Each rank is a fresh interpreter running ``python -m sgdlab.distributed.launch
<spec> <rank>``: it sets ``torch.set_num_threads(1)``, joins a gloo group by TCP rendezvous at
``addr:port`` (127.0.0.1 and a free port unless given), calls ``fn(rank, world_size, payload)``,
writes what it returns, leaves the group and ends with ``os._exit``.

**Nothing read from a file can run code.** The spec (target, world size, rendezvous address
and port, timeout) is JSON; the payload and each rank's result are ``torch.save`` files read
back with ``torch.load(weights_only=True)``, which builds only tensors, numbers, strings,
bytes and plain containers (dict, list, tuple, set) and calls no function the file names. A
payload or a result of any other type is refused with a one-line error (a rank that returns
one fails the run); callers convert at the boundary (``sgdlab dist`` sends
``dataclasses.asdict`` of its configurations). The files live in a private temporary folder
(mode 0700), removed when the run ends.

**The caller hands over what the ranks run**: a module-level function, whose importable
``module:qualname`` the launcher derives and checks (:func:`target_name`), or that name as a
string. The launcher names no module of its own callers: they sit in the layers above it.

**Nothing listens beyond** ``addr``: rank 0 binds the rendezvous to ``addr:port`` itself, and
for a loopback ``addr`` gloo uses the loopback interface (see
:func:`sgdlab.distributed.comm.init_process_group`). A testbed names its own address and sets
``GLOO_SOCKET_IFNAME`` per rank.

Because a rank is a command line, a caller can change how it runs: ``wrap(rank, argv)``
returns the argv to execute (the network-namespace testbed prefixes ``ip netns exec <ns>``)
and ``env_per_rank[rank]`` adds environment variables (``GLOO_SOCKET_IFNAME``, ...).

**Failures end the run, quickly and with a message.** Collectives time out after
``collective_timeout_s`` (a peer that died makes the others fail at once; one that hangs makes
them fail by then). The launcher polls every rank: when one exits with an error the others get
``grace_s`` to finish and are then killed, and when ``timeout_s`` passes with ranks still
running every rank is killed. Either way :class:`RankFailure` says which rank, why, and the
last line of its stderr. Nothing is left running.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from sgdlab.checkpoint import load_reason
from sgdlab.distributed.comm import DEFAULT_COLLECTIVE_TIMEOUT_S
from sgdlab.errors import RankFailure

DEFAULT_TIMEOUT_S = 300.0

Wrap = Callable[[int, list[str]], list[str]]


def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``addr`` now (the OS picks it)."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(addr, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as s:
        s.bind(sockaddr)
        return int(s.getsockname()[1])


def launch(
    world_size: int,
    target: str | Callable[..., Any],
    payload: Any = None,
    *,
    env_per_rank: Sequence[dict[str, str]] | None = None,
    wrap: Wrap | None = None,
    addr: str = "127.0.0.1",
    port: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
    grace_s: float = 5.0,
    on_start: Callable[[list[int]], object] | None = None,
) -> list[Any]:
    """Run ``target`` on every rank: a module-level function (see :func:`target_name`), or its
    name, ``"module:function"`` or ``"/path/file.py:function"``.

    Returns the per-rank return values, rank 0 first. Raises :class:`RankFailure` if a rank
    fails or the run outlives ``timeout_s`` (see the module docstring). ``on_start`` is called
    with the ranks' process ids, rank 0 first, once they have started (to monitor them, or to
    fault them on purpose).
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"Invalid world_size: {world_size}")
    if callable(target):
        target = target_name(target)
    if not isinstance(target, str) or ":" not in target:
        raise ValueError(f"Invalid target: {target!r} (need 'module:function')")
    if env_per_rank is not None and len(env_per_rank) != world_size:
        raise ValueError(
            f"Invalid env_per_rank: {len(env_per_rank)} entries for {world_size} ranks"
        )
    for name in ("timeout_s", "collective_timeout_s"):
        if not locals()[name] > 0:
            raise ValueError(f"Invalid {name}: {locals()[name]}")
    payload_bytes = _safe_dumps(payload, "payload")
    port = port or free_port(addr)
    workdir = Path(tempfile.mkdtemp(prefix="sgdlab-launch-"))  # mode 0700: ours only
    try:
        workdir.chmod(0o700)
        spec = {
            "target": target, "world_size": world_size, "addr": addr, "port": port,
            "collective_timeout_s": collective_timeout_s,
        }
        (workdir / "spec.json").write_text(json.dumps(spec))
        (workdir / "payload.pt").write_bytes(payload_bytes)
        procs = [_start(rank, workdir, env_per_rank, wrap) for rank in range(world_size)]
        if on_start is not None:
            on_start([p.pid for p in procs])
        _watch(procs, workdir, timeout_s, grace_s)
        return [_result(workdir, rank) for rank in range(world_size)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _start(
    rank: int, workdir: Path, env_per_rank: Sequence[dict[str, str]] | None, wrap: Wrap | None
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "sgdlab.distributed.launch", str(workdir / "spec.json"),
            str(rank)]
    if wrap is not None:
        argv = wrap(rank, argv)
    env = dict(os.environ)
    # The ranks import the sgdlab this process runs, installed or from a source tree.
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    if env_per_rank is not None:
        env.update(env_per_rank[rank])
    out_log, err_log = workdir / f"out-{rank}.log", workdir / f"err-{rank}.log"
    with out_log.open("wb") as out, err_log.open("wb") as err:
        return subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)


def _watch(
    procs: list[subprocess.Popen[bytes]], workdir: Path, timeout_s: float, grace_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    failed: tuple[int, int] | None = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            if failed is None:
                failed = next(((r, c) for r, c in enumerate(codes) if c not in (None, 0)), None)
                if failed is not None:
                    deadline = min(deadline, time.monotonic() + grace_s)
            if all(c is not None for c in codes):
                break
            if time.monotonic() > deadline:
                if failed is not None:
                    break
                running = [r for r, c in enumerate(codes) if c is None]
                raise RankFailure(
                    f"rank {', '.join(map(str, running))} still running after {timeout_s:g} s "
                    f"(hung?); all ranks were stopped{_last_line(workdir, running[0])}"
                )
            time.sleep(0.05)
        if failed is not None:
            rank, code = _first_failure(workdir, failed)
            # The first rank to fail is the cause; the others usually fail because it did. A
            # rank killed by a signal (before we killed anything) wrote no error of its own.
            killed = [(r, -c) for r, c in enumerate(codes) if c is not None and c < 0]
            if killed:
                dead, signum = killed[0]
                message = f"rank {dead} was killed by {_signal_name(signum)}"
                if rank != dead:
                    message += f"; rank {rank}{_last_line(workdir, rank)}"
                raise RankFailure(message)
            raise RankFailure(
                f"rank {rank} failed with exit code {code}{_last_line(workdir, rank)}"
            )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _first_failure(workdir: Path, seen: tuple[int, int]) -> tuple[int, int]:
    """The rank whose error came first (each failing rank stamps the time), and its code."""
    stamps = []
    for path in workdir.glob("failed-*"):
        try:
            stamps.append((float(path.read_text()), int(path.name.split("-")[1])))
        except ValueError:
            continue
    return (min(stamps)[1], 1) if stamps else seen


def _last_line(workdir: Path, rank: int) -> str:
    path = workdir / f"err-{rank}.log"
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return f": {lines[-1].strip()}" if lines else ""


def _result(workdir: Path, rank: int) -> Any:
    path = workdir / f"result-{rank}.pt"
    if not path.exists():
        raise RankFailure(f"rank {rank} exited without a result{_last_line(workdir, rank)}")
    try:
        return _safe_loads(path.read_bytes(), f"rank {rank}'s result")
    except ValueError as exc:
        raise RankFailure(str(exc)) from None


def _safe_dumps(obj: Any, what: str) -> bytes:
    """``torch.save`` bytes of ``obj``, checked to load back with ``weights_only=True``.

    Raises ``ValueError("Invalid <what>: ...")`` for anything else (a class instance, a NumPy
    array or scalar, a function): better at the sender, in one line, than a refused file later.
    """
    buffer = io.BytesIO()
    try:
        torch.save(obj, buffer)
        _load(buffer.getvalue())
    except Exception as exc:  # torch.save raises what pickle raises: many types
        raise ValueError(
            f"Invalid {what}: {load_reason(exc)} (send tensors, numbers, strings and plain "
            "containers; convert a dataclass with dataclasses.asdict)"
        ) from None
    return buffer.getvalue()


def _safe_loads(data: bytes, what: str) -> Any:
    """What :func:`_safe_dumps` wrote, read with ``weights_only=True``: no code runs.
    Raises ``ValueError`` naming ``what`` for a refused global or a broken file."""
    try:
        return _load(data)
    except Exception as exc:  # a refused global, a truncated or foreign file
        raise ValueError(f"{what} is not a weights_only torch file: {load_reason(exc)}") from None


def _load(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def target_name(fn: Callable[..., Any]) -> str:
    """``"module:qualname"`` of ``fn``, checked to name ``fn`` in a fresh interpreter.

    A rank is a new process, so it can run only a function defined at the top of a module it
    can import: not one in ``__main__``, a nested function, a lambda or a method.
    """
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    name = f"{module}:{qualname}"
    if module in (None, "__main__") or not qualname.isidentifier():
        raise ValueError(f"Invalid target: {name} (a rank runs a module-level function of an "
                         "importable module)")
    try:
        found = resolve(name)
    except (ImportError, AttributeError):
        found = None
    if found is not fn:
        raise ValueError(f"Invalid target: {name} does not name {fn!r} when imported")
    return name


def resolve(target: str) -> Callable[..., Any]:
    """The function ``"package.module:name"`` or ``"/path/to/file.py:name"`` names."""
    where, _, name = target.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        if spec is None or spec.loader is None:
            raise ValueError(f"Invalid target: cannot load {where}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn: Callable[..., Any] = getattr(module, name)
    return fn


def _rank_main(spec_path: str, rank: int) -> None:
    from sgdlab.distributed.comm import init_process_group, teardown_and_exit

    code = 0
    try:
        workdir = Path(spec_path).parent
        spec = json.loads(Path(spec_path).read_text())
        payload = _safe_loads((workdir / "payload.pt").read_bytes(), "the payload")
        torch.set_num_threads(1)
        world_size = spec["world_size"]
        if world_size > 1:
            init_process_group(rank, world_size, spec["addr"], spec["port"],
                               spec["collective_timeout_s"])
        result = resolve(spec["target"])(rank, world_size, payload)
        out = workdir / f"result-{rank}.pt"
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(_safe_dumps(result, f"result of rank {rank}"))
        os.replace(tmp, out)
    except BaseException as exc:  # noqa: B036 - report anything, then exit with a code
        Path(spec_path).with_name(f"failed-{rank}").write_text(repr(time.time()))
        traceback.print_exc()
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n".splitlines()[0] + "\n")
        code = 1
    teardown_and_exit(code)


if __name__ == "__main__":
    _rank_main(sys.argv[1], int(sys.argv[2]))
