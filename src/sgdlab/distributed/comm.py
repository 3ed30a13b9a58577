r"""Communication for the distributed algorithms: averaging collectives with handles, delay and
straggler injection, block gathering, and safe process-group set-up and teardown.

This is the one module of sgdlab that talks to ``torch.distributed`` (with :mod:`.launch`, which
only starts and ends process groups). :class:`Comm` works with no process group at all: rank 0
of a world of 1, where every collective is the identity and costs nothing.

**Averages.** :meth:`Comm.average` copies a list of tensors into one flat buffer (so the
caller may go on changing the originals), issues one ``all_reduce`` of the sum (``async_op``
unless blocking was asked for) and returns a :class:`Handle`; ``handle.wait()`` returns the
mean, one tensor per input, with the inputs' shapes.

**Injected delay.** With ``Injection(bandwidth_mbps=B, latency_ms=ℓ)`` a collective of a
buffer of :math:`n` bytes completes no sooner than

.. math:: t_{\text{issue}} + \ell + 8n / (B \cdot 10^6)

seconds. Nothing sleeps when the collective is issued: the computing thread goes on, and only
``wait()`` sleeps for whatever is left of that delay, so a delay shorter than the computation
that runs meanwhile is hidden entirely. (The model charges the whole buffer once; a ring
all-reduce moves :math:`2(W-1)/W` of it per rank, which a real link adds on top.)

**Stragglers.** With ``straggler_prob=p, straggler_slowdown=s`` each local step of a rank
takes, with probability :math:`p` drawn from a generator seeded by (seed, rank), :math:`s`
times as long: :meth:`Comm.straggle` sleeps :math:`(s-1)\,t` after a step that computed for
:math:`t` seconds.

**Failures.** Every collective here turns the backend's error into one
:class:`~sgdlab.errors.CommError` line saying what failed and why: a peer that died closes its
connections and the others fail at once; a peer that stalls leaves them waiting until the
group's timeout (``timeout_s`` of :func:`init_process_group`, 60 s by default), then they fail.
No rank waits forever.

**Clocks.** Each handle knows when it was issued, when the collective itself finished (a
callback on its future) and when it counts as complete (:math:`\max` of that and the injected
delay); ``wait()`` measures how long the caller was blocked. ``comm_seconds`` is completion
minus issue, ``wait_seconds`` the blocked part; what is not waited for was hidden.

>>> comm = Comm()  # no process group: rank 0 of 1
>>> (comm.rank, comm.world_size)
(0, 1)
>>> comm.average([torch.tensor([1.0, 3.0])]).wait()[0]
tensor([1., 3.])
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import re
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _unflatten_dense_tensors

from sgdlab.distributed.flat import flat_copy
from sgdlab.errors import CommError
from sgdlab.optim import assign_blocks as _assign_blocks

DEFAULT_COLLECTIVE_TIMEOUT_S = 60.0

_TIMED_OUT = re.compile(r"Timed out waiting (\d+)\s*ms")
_PEER_GONE = ("Connection reset", "Connection closed", "Broken pipe", "Read error",
              "Connection refused", "Socket closed", "EOF")


def comm_error(what: str, exc: BaseException) -> CommError:
    """One line for a failed collective: a stalled peer (timeout), a dead one, or the reason.

    >>> comm_error("all-reduce", RuntimeError("[x.cc:78] Timed out waiting 3000ms for recv"))
    CommError('all-reduce failed: no answer from a peer within 3 s (a rank stalled or died)')
    """
    text = str(exc)
    timed_out = _TIMED_OUT.search(text)
    if timed_out:
        seconds = int(timed_out.group(1)) / 1e3
        reason = f"no answer from a peer within {seconds:g} s (a rank stalled or died)"
    elif any(marker in text for marker in _PEER_GONE):
        reason = "a peer rank died (its connection closed)"
    else:
        reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return CommError(f"{what} failed: {reason}")


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a backend error inside the block into :func:`comm_error`'s one line."""
    try:
        yield
    except RuntimeError as exc:  # gloo raises DistBackendError, a RuntimeError
        raise comm_error(what, exc) from None


@dataclass(frozen=True)
class Injection:
    """Slow links and slow ranks, injected: see the module docstring."""

    bandwidth_mbps: float = 0.0  # 0: unlimited
    latency_ms: float = 0.0
    straggler_prob: float = 0.0
    straggler_slowdown: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("bandwidth_mbps", "latency_ms"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"Invalid {name}: {value}")
        if not 0.0 <= self.straggler_prob <= 1.0:
            raise ValueError(f"Invalid straggler_prob: {self.straggler_prob}")
        if not math.isfinite(self.straggler_slowdown) or self.straggler_slowdown < 1.0:
            raise ValueError(f"Invalid straggler_slowdown: {self.straggler_slowdown} (need >= 1)")

    def delay_seconds(self, nbytes: int) -> float:
        """Latency plus transfer time of ``nbytes`` at the injected bandwidth."""
        seconds = self.latency_ms / 1e3
        if self.bandwidth_mbps > 0:
            seconds += 8.0 * nbytes / (self.bandwidth_mbps * 1e6)
        return seconds


class Handle:
    """An averaging collective in flight. ``wait()`` once returns the mean tensors."""

    def __init__(
        self,
        flat: torch.Tensor,
        like: Sequence[torch.Tensor],
        world_size: int,
        work: dist.Work | None,
        issued: float,
        delay: float,
    ) -> None:
        self._flat, self._like, self._world = flat, list(like), world_size
        self._work = work
        self.issued = issued
        self._delay = delay
        self._finished: float | None = None if work is not None else issued
        self._lock = threading.Lock()
        self._waited = False
        self.comm_seconds = 0.0
        self.wait_seconds = 0.0
        if work is not None:
            work.get_future().add_done_callback(self._on_done)

    def _on_done(self, _: object) -> None:
        with self._lock:
            self._finished = time.perf_counter()

    def is_completed(self) -> bool:
        """Whether ``wait()`` would return without blocking."""
        if self._work is not None and not self._work.is_completed():
            return False
        return time.perf_counter() >= self.issued + self._delay

    def wait(self) -> list[torch.Tensor]:
        """Block until the collective and its injected delay are done; return the means."""
        if self._waited:
            raise RuntimeError("this handle was already waited for; a collective completes once")
        t0 = time.perf_counter()
        if self._work is not None:
            with collective("all-reduce"):
                self._work.wait()
        remaining = self.issued + self._delay - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
        t1 = time.perf_counter()
        with self._lock:
            # The callback may run a moment after wait() returns; then the collective ended by now.
            finished = self._finished if self._finished is not None else t1
        self._waited = True
        self.wait_seconds = t1 - t0
        self.comm_seconds = max(finished, self.issued + self._delay) - self.issued
        if self._world > 1:
            self._flat.div_(self._world)
        return list(_unflatten_dense_tensors(self._flat, self._like))


class Comm:
    """Rank, world size and the collectives the algorithms use (see the module docstring)."""

    def __init__(self, injection: Injection | None = None) -> None:
        self.injection = injection or Injection()
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world_size = 0, 1
        self._straggler_rng = random.Random(self.injection.seed * 1_000_003 + self.rank)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the straggler draws so far and the injected link rate."""
        return {"straggler_rng": self._straggler_rng.getstate(),
                "bandwidth_mbps": self.injection.bandwidth_mbps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["straggler_rng"]
        self._straggler_rng.setstate((version, tuple(internal), gauss))
        self.injection = dataclasses.replace(self.injection, bandwidth_mbps=state["bandwidth_mbps"])

    def average(self, tensors: Sequence[torch.Tensor], inject: bool = True,
                out: torch.Tensor | None = None) -> Handle:
        """Start averaging ``tensors`` over the ranks (copied first); ``wait()`` on the handle
        for the means (at once, for a blocking average). ``inject=False`` skips the injected
        delay (for bookkeeping collectives outside the clock). ``out``: a reused buffer (from
        :func:`~.flat.flat_buffer`) to average in; the means of one average die with the next."""
        if not tensors:
            raise ValueError("Invalid tensors: nothing to average")
        flat = flat_copy(tensors, out)
        issued = time.perf_counter()
        work = None
        delay = 0.0
        if self.distributed:
            if inject:
                delay = self.injection.delay_seconds(flat.numel() * flat.element_size())
            with collective("all-reduce"):
                work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
        return Handle(flat, tensors, self.world_size, work, issued, delay)

    def periodic_averager(self, period: int, warmup_steps: int) -> Any:
        """torch's own ``PeriodicModelAverager`` on the default group (None with no group)."""
        if not self.distributed:
            return None
        from torch.distributed.algorithms.model_averaging import averagers

        with warnings.catch_warnings():  # period 1 warns that DDP alone would do
            warnings.simplefilter("ignore")
            return averagers.PeriodicModelAverager(period=period, warmup_steps=warmup_steps)

    def run_averager(self, averager: Any, params: Any) -> float:
        """``averager.average_parameters(params)``, called every step as torch's
        ``PostLocalSGDOptimizer`` does, plus, when it averaged, the injected delay; the seconds
        it blocked then (else 0.0)."""
        step, warmup = averager.step, averager.warmup_steps
        due = step >= warmup and (step - warmup) % averager.period == 0
        t0 = time.perf_counter()
        with collective("all-reduce"):
            averager.average_parameters(params)
        if not due:
            return 0.0
        nbytes = sum(p.numel() * p.element_size() for g in params for p in g["params"]
                     if p.grad is not None)
        time.sleep(max(0.0, t0 + self.injection.delay_seconds(nbytes) - time.perf_counter()))
        return time.perf_counter() - t0

    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` in place with rank ``src``'s values."""
        if not self.distributed or not tensors:
            return
        flat = flat_copy(tensors, None)
        with collective("broadcast"):
            dist.broadcast(flat, src=src)
        with torch.no_grad():
            for t, v in zip(tensors, _unflatten_dense_tensors(flat, list(tensors)), strict=True):
                t.copy_(v)

    def straggle(self, step_seconds: float) -> float:
        """With the injected probability, sleep so the step took ``slowdown`` times as long.

        Returns the seconds slept. The draw happens every step, so the pattern of slow steps
        depends only on the seed and the rank.
        """
        inj = self.injection
        if inj.straggler_prob <= 0 or inj.straggler_slowdown <= 1:
            return 0.0
        if self._straggler_rng.random() >= inj.straggler_prob:
            return 0.0
        extra = (inj.straggler_slowdown - 1.0) * max(step_seconds, 0.0)
        time.sleep(extra)
        return extra

    def all_gather_blocks(
        self, blocks: dict[str, torch.Tensor], owners: dict[str, int]
    ) -> dict[str, torch.Tensor]:
        """Every rank gets every block, each broadcast from the rank that owns it.

        ``blocks`` must hold a tensor of the right shape and dtype under every key of ``owners``
        on every rank (the owner's values are the ones that count); keys go in sorted order so
        that all ranks issue the same broadcasts. Returns a new dict; inputs are untouched.
        """
        missing = sorted(set(owners) - set(blocks))
        if missing:
            raise ValueError(f"Invalid blocks: no tensor for {', '.join(missing)}")
        for key, owner in owners.items():
            if not 0 <= owner < self.world_size:
                raise ValueError(
                    f"Invalid owner of {key!r}: {owner} (world size {self.world_size})"
                )
        out = {key: blocks[key].detach().clone() for key in owners}
        if self.distributed:
            with collective("block broadcast"):
                for key in sorted(owners):
                    dist.broadcast(out[key], src=owners[key])
        return out

    def barrier(self) -> None:
        if self.distributed:
            with collective("barrier"):
                dist.barrier()

    def all_gather(self, tensor: torch.Tensor, what: str) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape and dtype everywhere), in rank order; ``what``
        names the collective in a :class:`CommError`."""
        if not self.distributed:
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        with collective(what):
            dist.all_gather(out, tensor)
        return out

    def max_(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """``tensor`` becomes the elementwise largest over the ranks, in place."""
        if self.distributed:
            with collective(what):
                dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def min_int(self, value: int) -> int:
        """The least of every rank's ``value`` (a blocking collective; ``value`` alone at W=1)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        with collective("all-reduce (min)"):
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())


def assign_blocks(names: Sequence[str], sizes: Sequence[int], world_size: int) -> dict[str, int]:
    """Owners for named blocks: :func:`sgdlab.optim.assign_blocks` (greedy, largest first).

    >>> assign_blocks(["a", "b", "c"], [10, 6, 5], 2)
    {'a': 0, 'b': 1, 'c': 1}
    """
    if len(names) != len(sizes):
        raise ValueError(f"Invalid sizes: {len(sizes)} sizes for {len(names)} blocks")
    return dict(zip(names, _assign_blocks(sizes, world_size), strict=True))


def init_process_group(
    rank: int, world_size: int, addr: str = "127.0.0.1", port: int = 29500,
    timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
) -> None:
    """Join a gloo group through TCP rendezvous at ``addr:port``; a collective that waits
    longer than ``timeout_s`` for a peer raises instead of hanging.

    **Nothing listens beyond** ``addr``. Rank 0 hosts the rendezvous store on a socket it binds
    to ``addr:port`` itself: given only a host and a port, ``TCPStore`` listens on every
    interface (``::``) whatever the host. For a loopback ``addr`` (the default) gloo is pinned
    to the loopback interface with ``GLOO_SOCKET_IFNAME`` (unless it is set already), where it
    would otherwise listen on the address the host name resolves to. A local group is thus
    reachable from this host only; ranks on other hosts need an ``addr`` they can reach.
    """
    os.environ.setdefault("MASTER_ADDR", addr)
    os.environ.setdefault("MASTER_PORT", str(port))
    timeout = timedelta(seconds=timeout_s)
    _pin_gloo_to_loopback(addr)
    if rank == 0:
        store = dist.TCPStore(addr, port, world_size, is_master=True, timeout=timeout,
                              master_listen_fd=_listen(addr, port))
    else:
        store = dist.TCPStore(addr, port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                            timeout=timeout)


def _listen(addr: str, port: int) -> int:
    """A socket listening on ``addr:port`` only; the store that is given it owns it."""
    import socket

    family, kind, proto, _, sockaddr = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen for the rendezvous on {addr}:{port}: "
                                 f"{exc.strerror}") from None
    return sock.detach()


def _pin_gloo_to_loopback(addr: str) -> None:
    """Set ``GLOO_SOCKET_IFNAME`` to the loopback interface if ``addr`` is a loopback address
    and nobody chose an interface (a testbed sets it to each namespace's link)."""
    import ipaddress
    import socket

    if "GLOO_SOCKET_IFNAME" in os.environ:
        return
    try:
        host = socket.getaddrinfo(addr, None, type=socket.SOCK_STREAM)[0][4][0]
        loopback = ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except (OSError, ValueError):
        return  # an unknown host fails the rendezvous itself, with its own message
    if loopback:
        names = [name for _, name in socket.if_nameindex()]
        os.environ["GLOO_SOCKET_IFNAME"] = next(
            (n for n in names if _is_loopback_interface(n)), "lo0" if "lo0" in names else "lo")


def _is_loopback_interface(name: str) -> bool:
    iff_loopback = 0x8  # <linux/if.h>
    try:
        with open(f"/sys/class/net/{name}/flags") as f:
            return bool(int(f.read(), 16) & iff_loopback)
    except (OSError, ValueError):
        return False


def init_from_env(timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> tuple[int, int]:
    """Join the group ``torchrun`` describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT);
    this process's rank and the world size.

    Under torchrun's elastic agent the agent hosts the rendezvous store (it listens where
    torchrun's ``--master-addr``/``--rdzv-endpoint`` say); otherwise rank 0 hosts it bound to
    ``MASTER_ADDR`` as :func:`init_process_group` does. Either way a loopback ``MASTER_ADDR``
    pins gloo to the loopback interface.
    """
    env = {}
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"Invalid environment: {name} is not set (run under torchrun, or "
                             "set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)")
        env[name] = os.environ[name]
    try:
        rank, world_size, port = (int(env[k]) for k in ("RANK", "WORLD_SIZE", "MASTER_PORT"))
    except ValueError:
        raise ValueError(f"Invalid environment: RANK={env['RANK']!r}, WORLD_SIZE="
                         f"{env['WORLD_SIZE']!r}, MASTER_PORT={env['MASTER_PORT']!r} "
                         "(need integers)") from None
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True):
        # The agent keeps one store across restarts, and gloo's keys do not name the attempt:
        # a restarted rank could read a dead peer's address and hang connecting to it. Keys
        # under a prefix per attempt are always this attempt's.
        _pin_gloo_to_loopback(env["MASTER_ADDR"])
        timeout = timedelta(seconds=timeout_s)
        agent = dist.TCPStore(env["MASTER_ADDR"], port, world_size, is_master=False,
                              timeout=timeout)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"sgdlab/attempt-{attempt}", agent)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                                timeout=timeout)
        return rank, world_size
    init_process_group(rank, world_size, env["MASTER_ADDR"], port, timeout_s)
    return rank, world_size


def probe_all_reduce(sizes_bytes: Sequence[int], repeats: int = 3) -> dict[str, Any]:
    """One rank of a gloo all_reduce probe: ``python -m sgdlab.testbed.probe SIZE...``.

    Joins the group from the environment (:meth:`Testbed.rank_env`), checks that an
    all_reduce of ``rank + 1`` sums to ``n (n + 1) / 2``, then times ``repeats`` all_reduces of
    each size (float32; one untimed round first; sizes interleaved; each after a barrier).
    """
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://",
                            timeout=timedelta(seconds=60))
    rank, n = dist.get_rank(), dist.get_world_size()
    sizes = [16, *sizes_bytes]
    expected, ok = n * (n + 1) / 2, True
    tensors = {s: torch.empty(max(1, s // 4)) for s in sizes}
    seconds: dict[str, list[float]] = {str(s): [] for s in sizes}
    for r in range(repeats + 1):  # sizes interleaved, so noise hits them alike
        for size, x in tensors.items():
            x.fill_(rank + 1)
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(x)
            if r > 0:
                seconds[str(size)].append(time.perf_counter() - t0)
            ok = ok and bool((x == expected).all())
    return {"rank": rank, "world_size": n, "sum_ok": ok, "seconds": seconds}


def teardown_and_exit(code: int) -> None:
    """Leave the group and end the process at once: gloo can abort at interpreter exit."""
    try:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    finally:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
