"""The slow-network testbed: pure planning everywhere; real namespaces, rates and gloo as root.

The root tests build real testbeds under unique names with their state in ``tmp_path``; a
fixture finalizer removes them even when a test fails, and checks that nothing is left.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import sgdlab.testbed.netns as tbm
from sgdlab.cli import main
from sgdlab.errors import ConfigError
from sgdlab.testbed import Testbed, TestbedError, links, tcp_goodput, teardown
from sgdlab.testbed.probe import measure_throughput, run_gloo_probe, status_report

F = TypeVar("F", bound=Callable[..., Any])

SRC = Path(__file__).resolve().parents[2] / "src"
_ROOT_MARKS = (
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and tc"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("tc") is None,
                       reason="needs iproute2 (ip and tc): apt-get install iproute2"),
)


def needs_root(fn: F) -> F:
    """Run only as root with iproute2; skip elsewhere, saying why."""
    for mark in _ROOT_MARKS:
        fn = mark(fn)
    return fn


# --- pure: no root, no system ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "bps"), [
    ("200mbit", 200_000_000), ("1gbit", 10**9), ("1.5gbit", 1_500_000_000),
    ("64kbit", 64_000), (" 50MBIT ", 50_000_000), (100_000, 100_000), ("none", None), (None, None),
])
def test_parse_rate(text: str | int | None, bps: int | None) -> None:
    assert links.parse_rate(text) == bps


@pytest.mark.parametrize("bad", ["200mbps", "fast", "-1mbit", "0mbit", "1kbit", "200tbit",
                                 True, 3.5, "", "mbit"])
def test_parse_rate_refuses(bad: object) -> None:
    with pytest.raises(ConfigError, match="Invalid rate"):
        links.parse_rate(bad)


def test_burst_holds_a_gso_packet_and_a_millisecond() -> None:
    """A bucket smaller than one GSO packet makes tbf cut TCP's 64 KiB packets into frames in
    software, on the cores that compute (benchmarks/results/overlap-cpu.md)."""
    frames = -(-65536 // 1448)  # 64 KiB of payload in full segments of MSS 1448
    gso_on_wire = 65536 + frames * (14 + 20 + 20 + 12)  # each with Ethernet, IP, TCP headers
    assert links.GSO_PACKET_BYTES == gso_on_wire
    for rate in (None, 8_000, 10**6, 10**8, 10**9, 10**10):
        b = links.default_burst(rate)
        assert b > gso_on_wire and (rate is None or b >= rate / 8 / 1000)


def test_tcp_goodput_is_payload_over_frame() -> None:
    mtu, ip, tcp, timestamps, ethernet = 1500, 20, 20, 12, 14
    payload, frame = mtu - ip - tcp - timestamps, mtu + ethernet
    assert tcp_goodput(10**8) == pytest.approx(10**8 * payload / frame)


def test_plan_hosts_names_and_addresses() -> None:
    switch, hosts = links.plan_hosts("ab1", 5, "192.168.40.0/24")
    assert switch == "sgdl-ab1-sw"
    assert len({h.namespace for h in hosts}) == 5 and len({h.address for h in hosts}) == 5
    net = ipaddress.IPv4Network("192.168.40.0/24")
    assert all(ipaddress.IPv4Address(h.address) in net for h in hosts)
    assert all(h.namespace.startswith("sgdl-ab1-") and h.interface == "sgdl0" for h in hosts)


@pytest.mark.parametrize(("name", "hosts", "subnet", "match"), [
    ("Bad-Name", 2, "10.77.0.0/24", "name"), ("x" * 11, 2, "10.77.0.0/24", "name"),
    ("tb", 0, "10.77.0.0/24", "hosts"), ("tb", 7, "10.77.0.0/29", "hosts"),
    ("tb", 2, "8.8.8.0/24", "subnet"), ("tb", 2, "10.77.0.0/30", "subnet"),
    ("tb", 2, "10.77.0.1/24", "subnet"), ("tb", 2, "not-a-net", "subnet"),
])
def test_plan_hosts_refuses(name: str, hosts: int, subnet: str, match: str) -> None:
    with pytest.raises(ConfigError, match=f"Invalid {match}"):
        links.plan_hosts(name, hosts, subnet)


def _namespace_of(cmd: list[str]) -> str:
    return cmd[cmd.index("-n") + 1] if "-n" in cmd else cmd[3]


@pytest.mark.parametrize("ingress", [True, False])
def test_commands_touch_only_our_namespaces(ingress: bool) -> None:
    switch, hosts = links.plan_hosts("tb", 3)
    shape = links.LinkShape(10**8, 32768, 25.0, limit_ingress=ingress)
    cmds = links.build_commands(switch, hosts, shape, 24)
    ours = {switch, *(h.namespace for h in hosts)}
    for cmd in cmds:  # every command names one of our namespaces: the root one is never touched
        assert cmd[:3] == ["ip", "netns", "add"] or "-n" in cmd, cmd
        assert _namespace_of(cmd) in ours, cmd
    tbf = [c for c in cmds if "tbf" in c]
    assert {_namespace_of(c) for c in tbf} == ({*ours} if ingress else ours - {switch})
    assert len(tbf) == (6 if ingress else 3)
    assert all(c[c.index("rate") + 1] == "100000000bit" for c in tbf)


def test_delay_puts_netem_over_tbf_on_switch_ports() -> None:
    switch, hosts = links.plan_hosts("tb", 2)
    shape = links.LinkShape(10**8, 32768, 25.0, delay_ms=5.0)
    cmds = links.build_commands(switch, hosts, shape, 24)
    port = [c for c in cmds if _namespace_of(c) == switch and c[0] == "tc"]
    assert [("netem" in c, "tbf" in c, "parent" in c) for c in port] == [
        (True, False, False), (False, True, True)] * 2


def _offline_testbed() -> Testbed:
    switch, hosts = links.plan_hosts("tb", 3)
    return Testbed("tb", switch, hosts, links.LinkShape(10**8, 32768, 25.0), "10.77.0.0/24",
                   Path("/nonexistent/state.json"))


def test_wrap_command_and_rank_env() -> None:
    tb = _offline_testbed()
    assert tb.wrap_command(2, ["python", "-c", "1"]) == [
        "ip", "netns", "exec", "sgdl-tb-h2", "python", "-c", "1"]
    env = tb.rank_env(1)
    assert env == {"GLOO_SOCKET_IFNAME": "sgdl0", "TP_SOCKET_IFNAME": "sgdl0",
                   "MASTER_ADDR": "10.77.0.1", "MASTER_PORT": "29500", "RANK": "1",
                   "WORLD_SIZE": "3"}
    assert tb.rank_env(2, rank=5, world_size=6, master_port=1234)["RANK"] == "5"
    assert tb.host(1) == links.Host(1, "sgdl-tb-h1", "sgdl0", "10.77.0.2")


def test_launch_options_round_robin_on_host_0() -> None:
    tb = _offline_testbed()
    opts = tb.launch_options(5)
    assert opts["addr"] == "10.77.0.1" and opts["port"] == 29500
    assert opts["wrap"](4, ["python"]) == ["ip", "netns", "exec", "sgdl-tb-h1", "python"]
    assert [e["RANK"] for e in opts["env_per_rank"]] == ["0", "1", "2", "3", "4"]
    assert {e["WORLD_SIZE"] for e in opts["env_per_rank"]} == {"5"}
    assert {e["MASTER_ADDR"] for e in opts["env_per_rank"]} == {"10.77.0.1"}
    with pytest.raises(ConfigError, match="Invalid world_size"):
        tb.launch_options(0)


@pytest.mark.parametrize(("call", "match"), [
    (lambda tb: tb.host(3), "Invalid host"), (lambda tb: tb.host(-1), "Invalid host"),
    (lambda tb: tb.wrap_command(0, "python x"), "Invalid argv"),
    (lambda tb: tb.wrap_command(0, []), "Invalid argv"),
    (lambda tb: tb.rank_env(0, rank=3), "Invalid rank"),
    (lambda tb: tb.rank_env(0, master_port=0), "Invalid master_port"),
])
def test_bad_calls_raise(call: Callable[[Testbed], object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call(_offline_testbed())


def test_not_root_or_no_iproute2_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(TestbedError, match="needs root"):
        Testbed.up(2, "10mbit", name="nr", state_dir=tmp_path)
    with pytest.raises(TestbedError, match="needs root"):
        teardown("nr", state_dir=tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(TestbedError, match="install iproute2"):
        Testbed.up(2, "10mbit", name="nr", state_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_load_without_state_and_bad_up_arguments(tmp_path: Path) -> None:
    with pytest.raises(TestbedError, match="no testbed 'zz' is up"):
        Testbed.load("zz", state_dir=tmp_path)
    for kwargs, match in [({"burst": 100}, "burst"), ({"latency_ms": 0.0}, "latency_ms"),
                          ({"delay_ms": -1.0}, "delay_ms"), ({"name": "A"}, "name")]:
        with pytest.raises(ConfigError, match=f"Invalid {match}"):
            Testbed.up(2, "10mbit", state_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_cli_help_and_bad_rate(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["testbed", "--help"], ["testbed", "up", "--help"], ["testbed", "down", "--help"],
                 ["testbed", "status", "--help"]):
        assert main(args) == 0 and "Usage" in capsys.readouterr().out
    assert main(["testbed", "up", "--hosts", "2", "--rate", "9mbps"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: Invalid rate: '9mbps' (use bit units: bit, kbit, mbit, gbit)")


# --- root: real namespaces -----------------------------------------------------------------------

MakeTestbed = Any  # the fixture's factory: make(tag, hosts=2, rate="100mbit", **kw) -> Testbed


def _namespaces(name: str) -> set[str]:
    return {ns for ns in tbm.existing_namespaces() if ns.startswith(f"sgdl-{name}-")}


def _all_of(tb: Testbed) -> set[str]:
    return {tb.switch, *(h.namespace for h in tb.hosts)}


@pytest.fixture
def make_testbed(tmp_path: Path) -> Iterator[MakeTestbed]:
    """A factory of testbeds under unique names; each is removed (and checked gone) at the end,
    whatever the test did."""
    names: list[str] = []

    def make(tag: str, hosts: int = 2, rate: str | None = "100mbit", **kw: Any) -> Testbed:
        names.append(f"{tag}{os.getpid() % 100000}")
        return Testbed.up(hosts, rate, name=names[-1], state_dir=tmp_path, **kw)

    yield make
    for name in names:
        teardown(name, state_dir=tmp_path)
        assert not _namespaces(name), f"testbed {name} left namespaces behind"


def _root_snapshot() -> tuple[list[str], list[str], str]:
    def ip(*args: str) -> Any:
        return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True,
                                         check=True).stdout or "[]")

    links = sorted(i["ifname"] for i in ip("link", "show"))
    addrs = sorted(a["local"] for i in ip("addr", "show") for a in i.get("addr_info", []))
    return links, addrs, json.dumps(ip("route", "show"), sort_keys=True)


@needs_root
def test_up_builds_isolated_hosts_and_leaves_root_alone(make_testbed: MakeTestbed,
                                                        tmp_path: Path) -> None:
    before = _root_snapshot()
    tb = make_testbed("iso", hosts=3, rate="50mbit")
    assert _root_snapshot() == before
    assert _namespaces(tb.name) == _all_of(tb)
    for h in tb.hosts:
        out = subprocess.run(tb.wrap_command(h.index, ["ip", "-j", "route", "show"]),
                             capture_output=True, text=True, check=True).stdout
        assert [r["dst"] for r in json.loads(out)] == ["10.77.0.0/24"]  # no way out
    loaded = Testbed.load(tb.name, state_dir=tmp_path)
    assert loaded.hosts == tb.hosts and loaded.shape == tb.shape
    status = status_report(tb)
    assert status["switch_present"] and all(h["present"] for h in status["hosts"])
    with pytest.raises(TestbedError, match="already up"):
        Testbed.up(2, "50mbit", name=tb.name, state_dir=tmp_path)
    assert _namespaces(tb.name) == _all_of(tb)  # the refused `up` removed nothing of the first
    assert set(tb.down()) == _all_of(tb) and not _namespaces(tb.name)
    assert not tb.state_file.exists() and tb.down() == []


@needs_root
@pytest.mark.parametrize(("rate", "nbytes"), [("50mbit", 3 << 20), ("200mbit", 12 << 20)])
def test_rate_holds(make_testbed: MakeTestbed, rate: str, nbytes: int) -> None:
    tb = make_testbed("rate", rate=rate)
    res = measure_throughput(tb, 0, 1, nbytes, timeout_s=20)
    assert res["bytes"] == nbytes
    goodput = tcp_goodput(links.parse_rate(rate))
    assert res["bps"] == pytest.approx(goodput, rel=0.10), res
    sent = tb.egress_stats(0)["bytes"]  # tbf counts frames: payload * 1514/1448 plus handshakes
    assert nbytes * 1514 / 1448 <= sent <= nbytes * 1514 / 1448 * 1.03 + 10_000


@needs_root
def test_unshaped_control_is_much_faster(make_testbed: MakeTestbed) -> None:
    """The probe can see a missing shaper: a bare veth pair runs far above 200 Mbit/s."""
    tb = make_testbed("open", rate=None)
    assert measure_throughput(tb, 1, 0, 12 << 20, timeout_s=20)["bps"] > 3 * 200e6


@needs_root
@pytest.mark.slow
def test_gloo_all_reduce_across_namespaces(make_testbed: MakeTestbed) -> None:
    """Two ranks, each in its namespace: the sum is right, and B bytes take about 8B/goodput
    (with two ranks every link carries B bytes each way, module doc of bench.testbed)."""
    tb = make_testbed("gloo", rate="100mbit")
    nbytes = 4 << 20
    ranks = run_gloo_probe(tb, [nbytes], repeats=3, timeout_s=90)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["sum_ok"] for r in ranks)
    ideal = 8 * nbytes / tcp_goodput(10**8)
    median = sorted(ranks[0]["seconds"][str(nbytes)])[1]
    assert 0.9 * ideal <= median <= 1.6 * ideal, (median, ideal)
    assert ranks[0]["seconds"]["16"][1] < 0.2 * ideal  # a small all_reduce is not rate-bound


@needs_root
def test_error_inside_with_tears_down(make_testbed: MakeTestbed) -> None:
    with pytest.raises(RuntimeError, match="boom"), make_testbed("err") as tb:
        assert _namespaces(tb.name) == _all_of(tb)
        raise RuntimeError("boom")
    assert not _namespaces(tb.name) and not tb.state_file.exists()


@needs_root
def test_failure_in_the_middle_of_up_removes_what_was_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real, seen = tbm._run, []

    def failing_second_tbf(cmd: Any, *, check: bool = True) -> Any:
        seen.append(list(cmd))
        if "tbf" in cmd and sum("tbf" in c for c in seen) == 2:  # a real failure of tc
            cmd = [*cmd[:cmd.index("dev") + 1], "nosuchdev0", *cmd[cmd.index("dev") + 2:]]
        return real(cmd, check=check)

    monkeypatch.setattr(tbm, "_run", failing_second_tbf)
    name = f"half{os.getpid() % 100000}"
    try:
        with pytest.raises(TestbedError, match="nosuchdev0.* failed: "):
            Testbed.up(2, "50mbit", name=name, state_dir=tmp_path)
        assert any(c[:3] == ["ip", "netns", "add"] for c in seen)  # it had built something
        assert not _namespaces(name) and not list(tmp_path.iterdir())
    finally:
        monkeypatch.undo()
        teardown(name, state_dir=tmp_path)


@needs_root
def test_delay_needs_netem_and_fails_cleanly_without(tmp_path: Path) -> None:
    name = f"dly{os.getpid() % 100000}"
    try:
        tb = Testbed.up(2, "50mbit", name=name, state_dir=tmp_path, delay_ms=20.0)
    except TestbedError as exc:  # this kernel: no sch_netem
        assert "netem" in str(exc)
        assert not _namespaces(name) and not list(tmp_path.iterdir())
    else:  # a kernel with netem: the switch ports carry the delay, over the rate limit
        out = subprocess.run(["tc", "-n", tb.switch, "qdisc", "show"], capture_output=True,
                             text=True, check=True).stdout
        assert out.count("netem") == 2 and "delay 20ms" in out and out.count("tbf") == 2
    finally:
        teardown(name, state_dir=tmp_path)


_SIGNALLED = """
import sys, time
from pathlib import Path
from sgdlab.testbed import Testbed
with Testbed.up(2, "50mbit", name=sys.argv[1], state_dir=Path(sys.argv[2])) as tb:
    print("up", flush=True)
    time.sleep(60)
"""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@needs_root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_tears_down(tmp_path: Path, sig: int) -> None:
    name = f"s{sig}{os.getpid() % 100000}"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # A shell without job control starts background jobs with SIGINT ignored, and Python then
    # keeps it ignored; the child is put back to what a terminal's Ctrl-C would meet.
    proc = subprocess.Popen([sys.executable, "-c", _SIGNALLED, name, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        assert len(_namespaces(name)) == 3
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        # SIGTERM: SystemExit(143); SIGINT: KeyboardInterrupt, which Python ends by dying of SIGINT
        assert proc.returncode == (128 + sig if sig == signal.SIGTERM else -sig), err
        assert not _namespaces(name) and not list(tmp_path.iterdir())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        teardown(name, state_dir=tmp_path)


@needs_root
def test_down_after_a_crash_removes_leftovers_and_their_processes(
    make_testbed: MakeTestbed,
) -> None:
    tb = make_testbed("crash")
    sleeper = tb.spawn(1, ["sleep", "60"])
    tb.state_file.unlink()  # as if `up`'s process had been killed: only the names are left
    with pytest.raises(TestbedError, match="without a state file"):
        Testbed.up(2, "50mbit", name=tb.name, state_dir=tb.state_file.parent)
    assert set(teardown(tb.name, state_dir=tb.state_file.parent)) == _all_of(tb)
    assert sleeper.wait(timeout=10) == -signal.SIGTERM
    assert not _namespaces(tb.name)


@needs_root
def test_cli_up_status_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"cli{os.getpid() % 100000}"
    base = ["--name", name, "--state-dir", str(tmp_path), "--json"]
    try:
        assert main(["testbed", "up", "--hosts", "2", "--rate", "20mbit", *base]) == 0
        up = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert up["shape"]["rate_bps"] == 20_000_000 and len(up["hosts"]) == 2
        assert main(["testbed", "status", *base]) == 0
        status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert all(h["present"] for h in status["hosts"])
        assert main(["testbed", "up", "--hosts", "2", *base]) == 2
        assert "already up" in capsys.readouterr().err
        assert main(["testbed", "down", *base]) == 0
        down = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert len(down["removed"]) == 3 and not _namespaces(name)
        assert main(["testbed", "status", *base]) == 2
    finally:
        teardown(name, state_dir=tmp_path)


@needs_root
@pytest.mark.slow
def test_showcase_section(tmp_path: Path) -> None:
    from sgdlab.testbed.probe import showcase_testbed

    section = showcase_testbed(None)
    assert [r["measure"] for r in section.rows] == ["TCP goodput, Mbit/s", "all_reduce 4 MiB, s"]
    assert 0.9 < section.rows[0]["ratio"] < 1.1 and 0.9 < section.rows[1]["ratio"] < 1.6
    assert "correct" in section.text and not _namespaces(f"demo{os.getpid() % 100000}")


def test_showcase_says_why_not_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from sgdlab.testbed.probe import showcase_testbed

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    section = showcase_testbed(None)
    assert section.rows == [] and section.text.startswith("skipped: the testbed needs root")
