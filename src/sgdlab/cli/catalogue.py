"""``sgdlab list``: the workloads and optimizers there are, as a table or JSON."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from sgdlab.cli.options import JsonOption, emit_json
from sgdlab.report.tables import console


def catalogue() -> dict[str, Any]:
    from sgdlab.optim.registry import _REGISTRY, peer_names
    from sgdlab.workloads import workload_names, workload_options, workload_spec

    workloads = []
    for name in workload_names():
        spec = workload_spec(name)
        workloads.append(
            {
                "name": name,
                "description": spec.description,
                "data": spec.dataset,
                "metric": spec.metric,
                "target": spec.target,
                "convex": spec.convex,
                "options": workload_options(name),
            }
        )
    optimizers = [
        {"name": s.name, "family": s.family, "description": s.description}
        for s in sorted(_REGISTRY.values(), key=lambda s: (s.family != "sgdlab", s.name))
    ]
    return {"workloads": workloads, "optimizers": optimizers, "peers": peer_names()}


def print_catalogue(cat: dict[str, Any]) -> None:
    t = Table(title="workloads")
    for col in ("name", "data", "metric ≥ target", "convex", "options", "description"):
        t.add_column(col)
    for w in cat["workloads"]:
        opts = ", ".join(f"{k}={v}" for k, v in w["options"].items())
        t.add_row(
            w["name"],
            w["data"],
            f"{w['metric']} ≥ {w['target']}",
            "yes" if w["convex"] else "",
            opts,
            w["description"],
        )
    console.print(t)
    t = Table(title="optimizers")
    for col in ("name", "family", "description"):
        t.add_column(col)
    for o in cat["optimizers"]:
        t.add_row(o["name"], o["family"], o["description"])
    console.print(t)
    if cat["peers"]:
        console.print(
            f"and {len(cat['peers'])} peers from pytorch_optimizer as peer:<name>, "
            f"e.g. {', '.join(cat['peers'][:6])}, …"
        )
    else:
        console.print("peers: install the extra (pip install 'sgdlab[peers]') for peer:<name>")


def _list(json_: JsonOption = False) -> None:
    """List the workloads and optimizers."""
    cat = catalogue()
    if json_:
        emit_json(cat)
    else:
        print_catalogue(cat)


def register(app: typer.Typer) -> None:
    app.command("list")(_list)
