"""``sgdlab hogwild``: lock-free parallel SGD on one model in shared memory."""

from __future__ import annotations

import dataclasses
from typing import Any

import typer

from sgdlab.cli import options
from sgdlab.run.config import HogwildRunConfig


def hogwild(*, set_: list[str] | None, json_: bool, **values: Any) -> None:
    from sgdlab.run.hogwild import hogwild_once

    opt_options, wl_options = options.parse_sets(set_ or [])
    if opt_options:
        raise typer.BadParameter(f"--set takes only workload.key=value here, got {opt_options}")
    config = HogwildRunConfig(**options.config_values(HogwildRunConfig, values),
                              workload_options=wl_options)
    rep = hogwild_once(**dataclasses.asdict(config))
    if json_:
        options.emit_json(rep)
        return
    from sgdlab.report.tables import print_mapping

    print_mapping(f"Hogwild! {config.workload} · {config.workers} workers", {
        k: v for k, v in rep.items() if not isinstance(v, list)
    })


def register(app: typer.Typer) -> None:
    doc = "Hogwild!: lock-free parallel SGD on one model in shared memory."
    options.command(app, "hogwild", doc, [
        *options.from_config(HogwildRunConfig, "workload", "workers", "steps", "lr", "schedule",
                             "mu", "L", "alpha", "batch_size", "seed"),
        options.set_option("workload.key=value: a workload option."),
        *options.from_config(HogwildRunConfig, "device", "allow_cuda"),
        options.json_option(),
    ], hogwild)
