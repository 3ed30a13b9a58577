"""The pure part of the testbed: names, addresses, the rate arithmetic and the iproute2/tc
commands a testbed of K hosts is built with (no process, no root: tested as plain functions).

Rate (``tc qdisc ... tbf rate r burst b latency L``): a bucket of b bytes is refilled at r/8
bytes per second and a frame leaves only if the bucket holds its size, so over any interval of
T seconds at most ``b + r T / 8`` bytes pass; see :mod:`sgdlab.testbed.netns` for the whole
picture.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sgdlab.errors import ConfigError

PREFIX = "sgdl"
HOST_INTERFACE = "sgdl0"
BRIDGE = "sgdl-br"
DEFAULT_NAME = "tb"
DEFAULT_SUBNET = "10.77.0.0/24"
_NAME_RE = re.compile(r"[a-z0-9]{1,10}")
_RATE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*")
_RATE_UNITS = {"": 1, "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
_FRAME, _MSS = 1514, 1448  # Ethernet frame of a full TCP segment and its payload (MTU 1500)
# One GSO packet: TCP hands the veth up to 64 KiB of payload at once, which leaves as 46 frames
# of at most 1514 bytes (about 67.6 KB on the wire); tbf cuts in software any packet larger
# than its bucket. 96 KiB holds one whole, with room.
GSO_PACKET_BYTES = 64 * 1024 + math.ceil(64 * 1024 / _MSS) * (_FRAME - _MSS)
MIN_BURST = 96 * 1024



@dataclass(frozen=True)
class Host:
    """One host of the testbed: its namespace, its one interface and that interface's address."""

    index: int
    namespace: str
    interface: str
    address: str


@dataclass(frozen=True)
class LinkShape:
    """The shaping of every link: tbf rate (bit/s; None: unshaped), bucket, queue, delay."""

    rate_bps: int | None
    burst_bytes: int
    latency_ms: float
    limit_ingress: bool = True
    delay_ms: float = 0.0

    def tbf(self) -> list[str]:
        """The tbf arguments of ``tc qdisc add ... root``.

        >>> LinkShape(200_000_000, 32768, 25.0).tbf()
        ['tbf', 'rate', '200000000bit', 'burst', '32768', 'latency', '25ms']
        """
        return ["tbf", "rate", f"{self.rate_bps}bit", "burst", str(self.burst_bytes),
                "latency", f"{self.latency_ms:g}ms"]


def parse_rate(rate: str | int | None) -> int | None:
    """A link rate in bit/s from ``"200mbit"``, ``"1gbit"``, ``"50000kbit"`` or an int.

    Units are tc's decimal bit units (``kbit`` = 1000 bit/s). tc reads ``mbps`` as *megabytes*
    per second, so byte units are refused rather than guessed. ``None`` or ``"none"``: unshaped.

    >>> parse_rate("200mbit"), parse_rate("1.5gbit"), parse_rate(64000), parse_rate("none")
    (200000000, 1500000000, 64000, None)
    >>> parse_rate("200mbps")
    Traceback (most recent call last):
    ...
    sgdlab.errors.ConfigError: Invalid rate: '200mbps' (use bit units: bit, kbit, mbit, gbit)
    """
    if rate is None or (isinstance(rate, str) and rate.strip().lower() == "none"):
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | str):
        raise ConfigError(f"Invalid rate: {rate!r}")
    if isinstance(rate, int):
        bps = rate
    else:
        m = _RATE_RE.fullmatch(rate.lower())
        if m is None or m.group(2) not in _RATE_UNITS:
            raise ConfigError(f"Invalid rate: {rate!r} (use bit units: bit, kbit, mbit, gbit)")
        bps = round(float(m.group(1)) * _RATE_UNITS[m.group(2)])
    if not 8_000 <= bps <= 100 * 10**9:
        raise ConfigError(f"Invalid rate: {rate!r} (between 8kbit and 100gbit)")
    return bps


def default_burst(rate_bps: int | None) -> int:
    """tbf bucket size: 1 ms of the rate, at least 96 KiB (:data:`MIN_BURST`).

    At least one whole GSO packet (:data:`GSO_PACKET_BYTES`), so tbf passes TCP's 64 KiB
    packets whole, as a NIC's segmentation offload (TSO) would. With a smaller bucket tbf cuts
    each into 1514-byte frames in software (``tbf_segment``), and the frames cross the bridge
    and the receiver's stack one by one, on the cores that also compute: 9.7 ms of system time
    and ≈ 17 ms of softirq per 0.8 MB all-reduce with the old 32 KiB default, ≈ 6× and ≈ 13×
    less with a bucket above a GSO packet (``benchmarks/results/overlap-cpu.md``). The price:
    after an idle spell up to the bucket passes at line speed, so a transfer of N bytes takes
    ``8 (N - b) / r`` rather than ``8 N / r`` (96 KiB is 4 ms at 200 Mbit/s); a smaller
    ``burst`` stays available for short messages at low rates.

    >>> default_burst(200_000_000), default_burst(1_000_000_000)
    (98304, 125000)
    """
    if rate_bps is None:
        return MIN_BURST
    return max(MIN_BURST, math.ceil(rate_bps / 8 * 1e-3))


def tcp_goodput(rate_bps: int) -> float:
    """Payload bit/s of one bulk TCP stream through tbf at ``rate_bps``: ``r * 1448 / 1514``.

    >>> round(tcp_goodput(200_000_000) / 1e6, 2)
    191.28
    """
    return rate_bps * _MSS / _FRAME


def plan_hosts(name: str, hosts: int, subnet: str = DEFAULT_SUBNET) -> tuple[str, list[Host]]:
    """Names and addresses, without touching the system: the switch namespace and the hosts.

    >>> switch, hs = plan_hosts("tb", 2)
    >>> switch, hs[1]
    ('sgdl-tb-sw', Host(index=1, namespace='sgdl-tb-h1', interface='sgdl0', address='10.77.0.2'))
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(f"Invalid name: {name!r} (1-10 of a-z, 0-9)")
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        raise ConfigError(f"Invalid subnet: {subnet!r} ({exc})") from None
    if not net.is_private or net.prefixlen > 29:
        raise ConfigError(f"Invalid subnet: {subnet!r} (a private IPv4 network of /29 or wider)")
    usable = list(net.hosts())
    if isinstance(hosts, bool) or not isinstance(hosts, int) or not 1 <= hosts <= min(
        len(usable), 250
    ):
        raise ConfigError(f"Invalid hosts: {hosts} (1 to {min(len(usable), 250)} in {subnet})")
    switch = f"{PREFIX}-{name}-sw"
    return switch, [
        Host(i, f"{PREFIX}-{name}-h{i}", HOST_INTERFACE, str(usable[i])) for i in range(hosts)
    ]


def build_commands(
    switch: str, hosts: Sequence[Host], shape: LinkShape, prefixlen: int
) -> list[list[str]]:
    """Every command of ``up``, in order; pure, so the topology is testable without root.

    >>> _, hs = plan_hosts("tb", 1)
    >>> cmds = build_commands("sgdl-tb-sw", hs, LinkShape(10**8, 32768, 25.0), 24)
    >>> " ".join(cmds[5])
    'ip -n sgdl-tb-sw link add sgdl-p0 type veth peer name sgdl0 netns sgdl-tb-h0'
    >>> [c[:4] for c in cmds if c[0] == "tc"]
    [['tc', '-n', 'sgdl-tb-h0', 'qdisc'], ['tc', '-n', 'sgdl-tb-sw', 'qdisc']]
    """
    sw = ["ip", "-n", switch]
    cmds = [
        ["ip", "netns", "add", switch],
        [*sw, "link", "add", BRIDGE, "type", "bridge"],
        [*sw, "link", "set", BRIDGE, "addrgenmode", "none"],  # no IPv6 link-local chatter
        [*sw, "link", "set", BRIDGE, "up"],
    ]
    for h in hosts:
        hn, port = ["ip", "-n", h.namespace], f"{PREFIX}-p{h.index}"
        cmds += [
            ["ip", "netns", "add", h.namespace],
            [*sw, "link", "add", port, "type", "veth", "peer", "name", h.interface,
             "netns", h.namespace],
            [*sw, "link", "set", port, "addrgenmode", "none"],
            [*sw, "link", "set", port, "master", BRIDGE, "up"],
            [*hn, "link", "set", "lo", "up"],
            # IPv4 only: gloo then has one address to pick on GLOO_SOCKET_IFNAME.
            [*hn, "link", "set", h.interface, "addrgenmode", "none"],
            [*hn, "addr", "add", f"{h.address}/{prefixlen}", "dev", h.interface],
            [*hn, "link", "set", h.interface, "up"],
        ]
        if shape.rate_bps is not None:
            cmds.append(["tc", "-n", h.namespace, "qdisc", "add", "dev", h.interface, "root",
                         *shape.tbf()])
        cmds += _switch_port_qdiscs(switch, port, shape)
    return cmds


def _switch_port_qdiscs(switch: str, port: str, shape: LinkShape) -> list[list[str]]:
    """The switch port's egress (the host's ingress): tbf, netem delay, or netem over tbf."""
    tc = ["tc", "-n", switch, "qdisc", "add", "dev", port]
    shaped = shape.rate_bps is not None and shape.limit_ingress
    if shape.delay_ms <= 0:
        return [[*tc, "root", *shape.tbf()]] if shaped else []
    # netem must hold a delay's worth of frames at the rate (its default limit is 1000).
    rate = shape.rate_bps if shape.rate_bps is not None else 10 * 10**9
    limit = 1000 + math.ceil(rate / 8 * shape.delay_ms * 1e-3 / 64)
    cmds = [[*tc, "root", "handle", "1:", "netem", "delay", f"{shape.delay_ms:g}ms",
             "limit", str(limit)]]
    if shaped:
        cmds.append([*tc, "parent", "1:1", "handle", "10:", *shape.tbf()])
    return cmds


