"""``sgdlab testbed up | down | status``: a slow network on this machine (root)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from sgdlab.cli import options
from sgdlab.cli.options import show
from sgdlab.run.config import check_output_paths
from sgdlab.testbed.config import TestbedConfig
from sgdlab.testbed.netns import Testbed, teardown
from sgdlab.testbed.probe import status_report


def _up_testbed(cfg: TestbedConfig) -> dict[str, Any]:
    """``sgdlab testbed up``: build it and leave it up; returns its status."""
    check_output_paths(out=Path(cfg.state_dir))  # before any namespace exists
    tb = Testbed.up(cfg.hosts, cfg.rate, name=cfg.name, burst=cfg.burst,
                    latency_ms=cfg.latency_ms, limit_ingress=not cfg.egress_only,
                    delay_ms=cfg.delay_ms, state_dir=cfg.state_dir)
    return status_report(tb)


def _down_testbed(name: str, *, state_dir: Path) -> dict[str, Any]:
    """``sgdlab testbed down``: remove it (and any leftovers bearing its names)."""
    return {"name": name, "removed": teardown(name, state_dir=state_dir)}


def _status_of_testbed(name: str, *, state_dir: Path) -> dict[str, Any]:
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


def _testbed_up(cfg: TestbedConfig, json_: bool) -> None:
    """Build K hosts on one bridge, every link rate-limited; stays up until `testbed down`."""
    show(_up_testbed(cfg), json_, _print_status)


def _testbed_down(*, name: str, state_dir: Path, json_: bool) -> None:
    """Remove the testbed: its namespaces (and the processes inside) and its state file."""
    show(_down_testbed(name, state_dir=state_dir), json_, lambda result: sys.stdout.write(
        f"removed {len(result['removed'])} namespaces: {' '.join(result['removed']) or '-'}\n"
    ))


def _testbed_status(*, name: str, state_dir: Path, json_: bool) -> None:
    """Hosts, addresses, link shape and each host's egress counters."""
    show(_status_of_testbed(name, state_dir=state_dir), json_, _print_status)


def _on_a_built_testbed(name: str, body: Callable[..., None]) -> None:
    """Command ``name``: ``body`` on the testbed that ``--name`` and ``--state-dir`` say."""
    options.command(app, name, body.__doc__ or "", [
        *options.from_config(TestbedConfig, "name", "state_dir"), options.json_option(),
    ], body)


options.config_command(app, "up", TestbedConfig, _testbed_up)
_on_a_built_testbed("down", _testbed_down)
_on_a_built_testbed("status", _testbed_status)
