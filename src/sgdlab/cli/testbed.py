"""``sgdlab testbed up | down | status``: a slow network on this machine (root)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sgdlab.cli.options import JsonOption, show
from sgdlab.run.config import check_output_paths
from sgdlab.testbed.links import DEFAULT_NAME
from sgdlab.testbed.netns import DEFAULT_STATE_DIR, Testbed, teardown
from sgdlab.testbed.probe import status_report


def _up_testbed(hosts: int, rate: str, *, name: str = DEFAULT_NAME, burst: int | None = None,
               latency_ms: float = 25.0, limit_ingress: bool = True, delay_ms: float = 0.0,
               state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, Any]:
    """``sgdlab testbed up``: build it and leave it up; returns its status."""
    check_output_paths(out=Path(state_dir))  # before any namespace exists
    tb = Testbed.up(hosts, rate, name=name, burst=burst, latency_ms=latency_ms,
                    limit_ingress=limit_ingress, delay_ms=delay_ms, state_dir=state_dir)
    return status_report(tb)


def _down_testbed(
    name: str = DEFAULT_NAME, *, state_dir: Path = DEFAULT_STATE_DIR
) -> dict[str, Any]:
    """``sgdlab testbed down``: remove it (and any leftovers bearing its names)."""
    return {"name": name, "removed": teardown(name, state_dir=state_dir)}


def _status_of_testbed(
    name: str = DEFAULT_NAME, *, state_dir: Path = DEFAULT_STATE_DIR
) -> dict[str, Any]:
    """``sgdlab testbed status``: the state file, which namespaces exist, egress counters."""
    return status_report(Testbed.load(name, state_dir=state_dir))


def _print_status(status: dict[str, Any]) -> None:
    """A table of the hosts of a testbed."""
    from rich.console import Console
    from rich.table import Table

    shape = status["shape"]
    rate = "unshaped" if shape["rate_bps"] is None else f"{shape['rate_bps'] / 1e6:g} Mbit/s"
    t = Table(title=f"testbed {status['name']}: {rate}, burst {shape['burst_bytes']} B, "
                    f"latency {shape['latency_ms']:g} ms, {status['subnet']}")
    for col in ("host", "namespace", "interface", "address", "present", "sent bytes", "drops"):
        t.add_column(col)
    for h in status["hosts"]:
        t.add_row(str(h["index"]), h["namespace"], h["interface"], h["address"],
                  str(h["present"]), str(h.get("bytes", "-")), str(h.get("drops", "-")))
    Console().print(t)


app = typer.Typer(
    help="A slow network on this machine: namespaces, veth, tc tbf (root).", no_args_is_help=True
)


_TestbedName = Annotated[str, typer.Option("--name", help="Testbed name (namespaces sgdl-NAME-*).")]
_StateDir = Annotated[Path, typer.Option("--state-dir", help="Folder of the state file.")]


def _testbed_up(
    hosts: Annotated[int, typer.Option("--hosts", help="Number of hosts (namespaces).")],
    rate: Annotated[str, typer.Option(help="Link rate, tc bit units: 200mbit, 1gbit; none.")] = (
        "200mbit"
    ),
    burst: Annotated[
        int | None, typer.Option(help="tbf bucket, bytes (default: 1 ms, >= 32 KiB).")
    ] = None,
    latency_ms: Annotated[float, typer.Option(help="tbf queue bound, ms.")] = 25.0,
    egress_only: Annotated[bool, typer.Option(help="Shape only what hosts send.")] = False,
    delay_ms: Annotated[float, typer.Option(help="One-way delay, ms (needs netem).")] = 0.0,
    name: _TestbedName = "tb",
    state_dir: _StateDir = Path("/run"),
    json_: JsonOption = False,
) -> None:
    """Build K hosts on one bridge, every link rate-limited; stays up until `testbed down`."""
    status = _up_testbed(
        hosts,
        rate,
        name=name,
        burst=burst,
        latency_ms=latency_ms,
        limit_ingress=not egress_only,
        delay_ms=delay_ms,
        state_dir=state_dir,
    )
    show(status, json_, _print_status)


def _testbed_down(
    name: _TestbedName = "tb", state_dir: _StateDir = Path("/run"), json_: JsonOption = False
) -> None:
    """Remove the testbed: its namespaces (and the processes inside) and its state file."""
    show(_down_testbed(name, state_dir=state_dir), json_, lambda result: sys.stdout.write(
        f"removed {len(result['removed'])} namespaces: {' '.join(result['removed']) or '-'}\n"
    ))


def _testbed_status(
    name: _TestbedName = "tb", state_dir: _StateDir = Path("/run"), json_: JsonOption = False
) -> None:
    """Hosts, addresses, link shape and each host's egress counters."""
    show(_status_of_testbed(name, state_dir=state_dir), json_, _print_status)


app.command("up")(_testbed_up)
app.command("down")(_testbed_down)
app.command("status")(_testbed_status)
