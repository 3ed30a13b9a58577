"""``sgdlab train``: one workload, one optimizer, one recorded run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from sgdlab.cli import options
from sgdlab.run.config import TrainConfig


def train(*, set_: list[str] | None, json_: bool, **values: Any) -> None:
    from sgdlab.run.train import train as run_train

    opt_options, wl_options = options.parse_sets(set_ or [])
    config = TrainConfig(
        **options.config_values(TrainConfig, values),
        optimizer_options=opt_options,
        workload_options=wl_options,
        progress=None if not json_ else False,
    )
    result = run_train(config)
    if json_:
        options.emit_json(result.to_json())
    else:
        from sgdlab.report.tables import print_result

        print_result(result)
        if result.skipped_steps:
            sys.stdout.write(
                f"{result.skipped_steps} steps skipped for a NaN or Inf (--on-nonfinite skip); "
                f"'skip' events in {Path(result.out_dir) / 'events.jsonl'}\n"
            )


def register(app: typer.Typer) -> None:
    doc = "Train one workload with one optimizer and record the run."
    options.command(app, "train", doc, [
        *options.from_config(TrainConfig, "workload", "optimizer", "lr", "steps", "batch_size",
                             "seed"),
        options.set_option("key=value: optimizer hyperparameter; workload.key=value."),
        *options.from_config(TrainConfig, "schedule", "warmup", "milestones", "gamma", "mu", "L",
                             "alpha", "eval_every",
                             "checkpoint_every", "resume", "out", "db", "device", "threads",
                             "on_nonfinite"),
        options.json_option(),
    ], train)
