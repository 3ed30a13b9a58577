"""``sgdlab dist``: a distributed run on local ranks (gloo), or one rank under ``torchrun``."""

from __future__ import annotations

import sys
from typing import Any

import typer

from sgdlab.cli import options
from sgdlab.errors import SgdlabError
from sgdlab.run.config import DistConfig, LaunchConfig

DOC = """Train on W local ranks (gloo) with a distributed algorithm; under torchrun, one rank.

    Across hosts: torchrun --nnodes N --nproc-per-node 1 --node-rank R --master-addr H
    --master-port P -m sgdlab.cli dist ... (rank 0 prints the result). With --max-restarts and
    --checkpoint-dir, ranks torchrun restarts continue from the newest checkpoint.
    """


def dist(*, set_: list[str] | None, json_: bool, **values: Any) -> None:
    from sgdlab.run import dist as run_dist

    opt_options, wl_options = options.parse_sets(set_ or [])
    fields = options.config_values(DistConfig, values)
    checkpoint_dir = fields.pop("checkpoint_dir")
    config = DistConfig(
        **fields,
        optimizer_options=opt_options,
        workload_options=wl_options,
        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir is not None else "",
    )
    if run_dist.under_torchrun():
        _torchrun_main(config, json_)
        return
    how = LaunchConfig(**options.config_values(LaunchConfig, values))
    where = _netns_launch_options(config.world_size) if how.testbed else {"addr": how.addr}
    result = run_dist.run_dist(config, launch_options=where, timeout_s=how.timeout)
    if json_:
        options.emit_json(run_dist.result_json(result))
    else:
        from sgdlab.report.tables import print_mapping

        print_mapping(
            f"sgdlab dist · {config.algo} · W={config.world_size}",
            {k: result[k] for k in run_dist.JSON_KEYS}
            | {"time_to_target": result["time_to_target"]},
        )


def _netns_launch_options(world_size: int) -> dict[str, Any]:
    """``launch`` keywords from the testbed module, or a one-line error if there is none."""
    from sgdlab.testbed import launch_options

    return launch_options(world_size)


def _torchrun_main(config: Any, json_: bool) -> None:
    """Train this rank; rank 0 prints the result; every rank then leaves with ``os._exit``."""
    from sgdlab.distributed.comm import teardown_and_exit
    from sgdlab.run.dist import JSON_KEYS, result_json
    from sgdlab.run.rank import run_under_torchrun

    code = 0
    try:
        config.validate()
        result = run_under_torchrun(config)
        if result is not None:
            result["seconds_per_step"] = result["wall_seconds"] / result["steps"]
            line = result_json(result) if json_ else {k: result[k] for k in JSON_KEYS}
            import json

            sys.stdout.write(json.dumps(line, default=str) + "\n")
    except (SgdlabError, ValueError) as exc:
        sys.stderr.write(f"error: {str(exc).splitlines()[0]}\n")
        code = 2
    teardown_and_exit(code)



def register(app: typer.Typer) -> None:
    options.command(app, "dist", DOC, [
        *options.from_config(DistConfig, "algo", "world_size", "workload", "optimizer", "lr",
                             "batch_size", "tau", "alpha", "anchor_momentum", "steps", "seed",
                             "partition", "bandwidth_mbps", "link_steps", "latency_ms",
                             "straggler_prob", "straggler_slowdown", "eval_every"),
        options.set_option("key=value: an inner hyperparameter, or workload.key=value."),
        *options.from_config(DistConfig, "checkpoint_every", "checkpoint_dir", "resume",
                             "collective_timeout_s"),
        *options.from_config(LaunchConfig),
        options.json_option(),
    ], dist)
