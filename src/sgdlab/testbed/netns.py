"""A slow network on one machine: network namespaces, veth pairs, a bridge and ``tc tbf``.

``Testbed.up(hosts=K, rate="200mbit")`` builds K "hosts" (network namespaces) plugged into a
"switch" (a bridge in a namespace of its own) by veth pairs, every link rate-limited with a
token bucket filter. A rank runs on host ``i`` as ``wrap_command(i, argv)`` (``ip netns exec``)
with ``rank_env(i)`` (``GLOO_SOCKET_IFNAME``, ``MASTER_ADDR``, ...)::

       sgdl-<name>-h0                  sgdl-<name>-sw                   sgdl-<name>-h1
    [ sgdl0 10.77.0.1/24 ]--veth--[ sgdl-p0 ]-sgdl-br-[ sgdl-p1 ]--veth--[ sgdl0 10.77.0.2/24 ]
      tbf: egress of h0          tbf: ingress of h0   tbf: ingress of h1      tbf: egress of h1

Isolation: the root namespace gains no interface, address, route or qdisc (the bridge lives in
the switch namespace, the veth pairs are created there and their far ends moved straight into
the hosts). A host has one interface with one address in a private /24 and only the on-link
route of that /24, so no packet can leave the testbed. Every name carries the prefix ``sgdl``
and the testbed's name, and a state file (``/run/sgdlab-testbed-<name>.json``), written before
anything is built, records it all, so ``down`` removes exactly what ``up`` made, even after a
crash in the middle of ``up``. Deleting a namespace deletes its interfaces, and a veth pair
dies with either end, so ``down`` is ``ip netns del`` of the recorded namespaces (after ending
any process still inside them).

Rate (``tc qdisc ... tbf rate r burst b latency L``): a bucket of b bytes is refilled at r/8
bytes per second and a frame leaves only if the bucket holds its size, so over any interval of
T seconds at most ``b + r T / 8`` bytes pass: a transfer of N bytes takes at least
``(8 N - 8 b) / r``; with the default ``b = max(96 KiB, 1 ms of r)`` (at least one whole GSO
packet, see :func:`~sgdlab.testbed.links.default_burst`) that is 0.1-0.8 % of a 1-second
transfer. tbf counts whole Ethernet frames (IP packet + 14-byte header); a TCP segment
of MSS 1448 (MTU 1500 - 20 IP - 20 TCP - 12 timestamp option) is a 1514-byte frame, so TCP
goodput is ``r * 1448 / 1514`` (about 0.956 r), see :func:`tcp_goodput`. ``latency`` L bounds
the queue: tbf holds at most ``r L / 8 + b`` bytes and drops what would wait longer. Both
directions are shaped by default (``limit_ingress``): each host's egress inside its namespace,
and the switch port's egress towards the host, like a full-duplex NIC of rate r; without it a
host could receive from K-1 senders at (K-1) r.

What cannot be done here: this kernel has no ``sch_netem``, so there is no propagation delay,
jitter, loss, reordering or duplication; tbf adds only queueing delay, and only under load.
``delay_ms`` uses netem on the switch ports (one-way delay; round trip ``2 delay_ms``) where a
kernel has it, and otherwise fails with a clear error before leaving anything behind. Delay in
the algorithms themselves belongs to their own injection, not to the network.

Root only: every function that touches the system raises :class:`TestbedError` otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from sgdlab.errors import ConfigError, TestbedError
from sgdlab.testbed.links import (
    DEFAULT_NAME,
    DEFAULT_SUBNET,
    PREFIX,
    Host,
    LinkShape,
    build_commands,
    default_burst,
    parse_rate,
    plan_hosts,
)

DEFAULT_STATE_DIR = Path("/run")
DEFAULT_MASTER_PORT = 29500
STATE_VERSION = 1

class Testbed:
    """A built testbed: its hosts, its link shape and its state file.

    Build one with :meth:`up` (as a context manager it tears down on exit, on an error and on
    SIGINT/SIGTERM/SIGHUP), or find the one ``sgdlab testbed up`` left with :meth:`load`.
    Run rank ``r`` on host ``i`` as ``subprocess.Popen(tb.wrap_command(i, argv),
    env={**os.environ, **tb.rank_env(i, rank=r, world_size=n)})``; gloo then talks over the
    host's shaped interface to ``MASTER_ADDR``, the address of host 0.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, name: str, switch: str, hosts: Sequence[Host], shape: LinkShape,
                 subnet: str, state_file: Path) -> None:
        self.name, self.switch, self.shape = name, switch, shape
        self.subnet, self.state_file = subnet, Path(state_file)
        self._hosts = tuple(hosts)

    # --- building and finding -------------------------------------------------------------

    @classmethod
    def up(
        cls,
        hosts: int,
        rate: str | int | None = "200mbit",
        *,
        name: str = DEFAULT_NAME,
        subnet: str = DEFAULT_SUBNET,
        burst: int | None = None,
        latency_ms: float = 25.0,
        limit_ingress: bool = True,
        delay_ms: float = 0.0,
        state_dir: Path = DEFAULT_STATE_DIR,
    ) -> Testbed:
        """Build ``hosts`` namespaces on one bridge, each link shaped to ``rate`` (bit/s).

        ``burst`` (bytes) and ``latency_ms`` are tbf's bucket and queue bound (module doc);
        ``delay_ms`` needs netem. On any failure or signal, what was built is removed again.
        """
        rate_bps = parse_rate(rate)
        if burst is None:
            burst = default_burst(rate_bps)
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1514 <= burst <= 2**30:
            raise ConfigError(f"Invalid burst: {burst} (bytes, at least one 1514-byte frame)")
        if not 0.1 <= latency_ms <= 10_000:
            raise ConfigError(f"Invalid latency_ms: {latency_ms} (0.1 to 10000)")
        if not 0 <= delay_ms <= 10_000:
            raise ConfigError(f"Invalid delay_ms: {delay_ms} (0 to 10000)")
        switch, planned = plan_hosts(name, hosts, subnet)
        shape = LinkShape(rate_bps, burst, float(latency_ms), bool(limit_ingress), float(delay_ms))
        require_root_and_iproute2()
        path = state_path(name, state_dir)
        if path.exists():
            raise TestbedError(f"testbed {name!r} is already up ({path}); "
                               f"run `sgdlab testbed down --name {name}` first")
        clash = sorted(ns for ns in existing_namespaces() if _ours(name).fullmatch(ns))
        if clash:
            raise TestbedError(f"namespaces of testbed {name!r} exist without a state file "
                               f"({', '.join(clash)}); run `sgdlab testbed down --name {name}`")
        tb = cls(name, switch, planned, shape, subnet, path)
        net = ipaddress.IPv4Network(subnet)
        with _signals_raise():
            claimed = False
            try:
                # The state comes first: whatever happens next, `down` knows what to remove.
                _write_state(path, tb._state(complete=False), claim=True)
                claimed = True
                for cmd in build_commands(switch, planned, shape, net.prefixlen):
                    try:
                        _run(cmd)
                    except TestbedError as exc:
                        if "netem" not in cmd:
                            raise
                        raise TestbedError(f"delay_ms needs the netem qdisc, which this kernel "
                                           f"lacks; tbf shapes rate only ({exc})") from None
                _write_state(path, tb._state(complete=True))
            except BaseException:
                if claimed:
                    tb.down()
                raise
        return tb

    @classmethod
    def load(cls, name: str = DEFAULT_NAME, *, state_dir: Path = DEFAULT_STATE_DIR) -> Testbed:
        """The testbed ``name`` as its state file records it (built by ``up`` elsewhere)."""
        path = state_path(name, state_dir)
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise TestbedError(f"no testbed {name!r} is up (no {path}); "
                               "start one with `sgdlab testbed up`") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise TestbedError(f"unreadable testbed state {path}: {exc}") from None
        if state.get("version") != STATE_VERSION or not state.get("complete"):
            raise TestbedError(f"testbed state {path} is incomplete or from another version; "
                               f"run `sgdlab testbed down --name {name}`")
        return cls(state["name"], state["switch"], [Host(**h) for h in state["hosts"]],
                   LinkShape(**state["shape"]), state["subnet"], path)

    def down(self) -> list[str]:
        """Remove this testbed (idempotent); returns the namespaces it deleted."""
        return teardown(self.name, state_dir=self.state_file.parent)

    def __enter__(self) -> Testbed:
        self._guard = _signals_raise()
        self._guard.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.down()
        finally:
            self._guard.__exit__(None, None, None)

    # --- running ranks on it --------------------------------------------------------------

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self._hosts

    def host(self, i: int) -> Host:
        """Host ``i`` (0-based): namespace, interface, address."""
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self._hosts):
            raise ConfigError(f"Invalid host: {i} (0 to {len(self._hosts) - 1})")
        return self._hosts[i]

    def wrap_command(self, i: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside host ``i``'s namespace: ``ip netns exec <ns> argv...``."""
        if isinstance(argv, str) or not argv:
            raise ConfigError(f"Invalid argv: {argv!r} (a non-empty list of strings)")
        return ["ip", "netns", "exec", self.host(i).namespace, *map(str, argv)]

    def rank_env(self, i: int, *, rank: int | None = None, world_size: int | None = None,
                 master_port: int = DEFAULT_MASTER_PORT) -> dict[str, str]:
        """Environment of a rank on host ``i`` (rank ``i`` of one per host unless told).

        ``GLOO_SOCKET_IFNAME`` pins gloo to the shaped interface, ``MASTER_ADDR`` is host 0's
        address; with ``MASTER_PORT``, ``RANK`` and ``WORLD_SIZE`` it suits ``init_method="env://"``.
        """
        host = self.host(i)
        rank = i if rank is None else rank
        world_size = len(self._hosts) if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ConfigError(f"Invalid rank: {rank} with world_size {world_size}")
        if not 1 <= master_port <= 65535:
            raise ConfigError(f"Invalid master_port: {master_port}")
        return {"GLOO_SOCKET_IFNAME": host.interface, "TP_SOCKET_IFNAME": host.interface,
                "MASTER_ADDR": self._hosts[0].address, "MASTER_PORT": str(master_port),
                "RANK": str(rank), "WORLD_SIZE": str(world_size)}

    def launch_options(self, world_size: int, *,
                       master_port: int = DEFAULT_MASTER_PORT) -> dict[str, Any]:
        """Keywords of :func:`sgdlab.distributed.launch.launch` that run rank ``r`` on host
        ``r % K`` (round robin: with more ranks than hosts, ranks share their host's link):
        ``wrap`` (argv -> ``ip netns exec``), ``env_per_rank``, ``addr`` and ``port`` of the
        rendezvous on host 0 (a fixed port: host 0's namespace is ours, nothing else listens)."""
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ConfigError(f"Invalid world_size: {world_size}")
        k = len(self._hosts)
        return {
            "wrap": lambda rank, argv: self.wrap_command(rank % k, argv),
            "env_per_rank": [self.rank_env(r % k, rank=r, world_size=world_size,
                                           master_port=master_port) for r in range(world_size)],
            "addr": self._hosts[0].address,
            "port": master_port,
        }

    def spawn(self, i: int, argv: Sequence[str], *, env: dict[str, str] | None = None,
              **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in host ``i``; ``env`` is added to this process's environment."""
        return subprocess.Popen(self.wrap_command(i, argv), env={**os.environ, **(env or {})},
                                **popen)

    # --- looking at it --------------------------------------------------------------------

    def egress_stats(self, i: int) -> dict[str, int]:
        """Counters of host ``i``'s egress qdisc: bytes and packets sent, drops, overlimits."""
        h = self.host(i)
        out = _run(["tc", "-n", h.namespace, "-j", "-s", "qdisc", "show", "dev", h.interface])
        root = next(q for q in json.loads(out.stdout) if q.get("root"))
        return {k: int(root.get(k, 0)) for k in ("bytes", "packets", "drops", "overlimits")}

    def _state(self, *, complete: bool) -> dict[str, Any]:
        return {"version": STATE_VERSION, "complete": complete, "name": self.name,
                "switch": self.switch, "namespaces": [self.switch, *(h.namespace for h in
                                                                    self._hosts)],
                "hosts": [asdict(h) for h in self._hosts], "shape": asdict(self.shape),
                "subnet": self.subnet, "created_by_pid": os.getpid(), "created": time.time()}

    def __repr__(self) -> str:
        rate = "unshaped" if self.shape.rate_bps is None else f"{self.shape.rate_bps}bit"
        return f"Testbed(name={self.name!r}, hosts={len(self._hosts)}, rate={rate})"


def teardown(name: str = DEFAULT_NAME, *, state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Remove testbed ``name``: its namespaces (all named ``sgdl-<name>-sw|h<i>``, so also what a
    crash in the middle of ``up`` left), after ending the processes inside, then its state file.
    Idempotent; INT/TERM/HUP wait until it is done, then arrive. Returns what it deleted."""
    require_root_and_iproute2()
    path = state_path(name, state_dir)
    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        # Hosts before the switch: each host's veth pair dies with it, the bridge last.
        ours = sorted((ns for ns in existing_namespaces() if _ours(name).fullmatch(ns)),
                      key=lambda ns: (ns.endswith("-sw"), ns))
        _end_processes(ours)
        for ns in ours:
            _run(["ip", "netns", "del", ns])
        path.unlink(missing_ok=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return ours



def require_root_and_iproute2() -> None:
    """Raise :class:`TestbedError` unless we are root and ``ip`` and ``tc`` are installed."""
    if os.geteuid() != 0:
        raise TestbedError("the testbed needs root (network namespaces and tc); run as root")
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise TestbedError(
            f"{' and '.join(missing)} not found: install iproute2 (apt-get install iproute2)"
        )


def state_path(name: str = DEFAULT_NAME, state_dir: Path = DEFAULT_STATE_DIR) -> Path:
    """Where the testbed called ``name`` records what it built.

    >>> state_path("tb").as_posix()
    '/run/sgdlab-testbed-tb.json'
    """
    plan_hosts(name, 1)  # validates the name
    return Path(state_dir) / f"sgdlab-testbed-{name}.json"


def _run(cmd: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One iproute2 command; on failure a one-line error naming the command and its complaint."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        why = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}")
        raise TestbedError(f"`{' '.join(cmd)}` failed: {why.splitlines()[0]}")
    return proc


def existing_namespaces() -> set[str]:
    """Names of the network namespaces that exist now (``ip netns list``)."""
    out = _run(["ip", "-j", "netns", "list"]).stdout.strip()
    return {entry["name"] for entry in json.loads(out)} if out else set()


def _write_state(path: Path, state: dict[str, Any], *, claim: bool = False) -> None:
    """Durably (fsync). ``claim``: create it, failing if it exists, so that of two ``up`` of one
    name one wins; otherwise atomically replace it (temp file, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path if claim else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | (os.O_EXCL if claim else os.O_TRUNC),
                     0o644)
    except FileExistsError:
        raise TestbedError(f"testbed {state['name']!r} is already up ({path}); "
                           f"run `sgdlab testbed down --name {state['name']}` first") from None
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if not claim:
        os.replace(target, path)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP raise SystemExit and SIGINT KeyboardInterrupt, so that
    ``finally`` blocks (the teardown) run. Only the main thread can set handlers; elsewhere
    this does nothing. Ignored signals stay ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        old = signal.getsignal(sig)
        if old is not signal.SIG_IGN:
            previous[sig] = old
            signal.signal(sig, _exit)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _end_processes(namespaces: Sequence[str], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``, to every process left inside our namespaces."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        deadline = time.monotonic() + wait_s
        for pid in _pids_in(namespaces):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        while _pids_in(namespaces) and time.monotonic() < deadline:
            time.sleep(0.05)


def _pids_in(namespaces: Sequence[str]) -> set[int]:
    """Processes whose network namespace is one of ours (as ``ip netns pids``; zombies have
    none), except this one."""
    inodes = set()
    for ns in namespaces:
        with contextlib.suppress(OSError):
            st = os.stat(f"/run/netns/{ns}")
            inodes.add((st.st_dev, st.st_ino))
    pids = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{entry.name}/ns/net")
                if (st.st_dev, st.st_ino) in inodes:
                    pids.add(int(entry.name))
    return pids


def _ours(name: str) -> re.Pattern[str]:
    return re.compile(rf"{PREFIX}-{re.escape(name)}-(sw|h[0-9]+)")


def launch_options(world_size: int, *, name: str = DEFAULT_NAME,
                   state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, Any]:
    """``sgdlab dist --testbed``: :meth:`Testbed.launch_options` of the testbed that
    ``sgdlab testbed up`` left up (a one-line error if there is none)."""
    return Testbed.load(name, state_dir=state_dir).launch_options(world_size)


