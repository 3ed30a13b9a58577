"""Distributed runs on this host: the launcher's side of ``sgdlab dist``.

:func:`run_dist` starts the ranks of one :class:`~sgdlab.run.config.DistConfig` through
:func:`~sgdlab.distributed.launch.launch` and returns rank 0's result with every rank's clocks;
:func:`run_dist_many` runs several configurations of one world size in the same processes,
one after another (data loaded once; the compared variants see the same machine load).

A testbed (network namespaces joined by rate-limited links) plugs in through
``launch_options``: a dict of :func:`launch` keywords (``wrap``, ``env_per_rank``, ``addr``)
that runs each rank in its namespace. ``sgdlab dist --testbed`` takes them from
``sgdlab.testbed.launch_options(world_size)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sgdlab.distributed.launch import RankFailure, launch
from sgdlab.errors import ConfigError
from sgdlab.run.config import DEFAULT_RUN_TIMEOUT_S, DistConfig
from sgdlab.run.rank import rank_entry_many

# sgdlab dist starts every rank as a process on this host; beyond this it is a fork bomb.
_MAX_LOCAL_RANKS = 256

JSON_KEYS = (
    "algo", "world_size", "tau", "steps", "wall_seconds", "compute_seconds", "comm_seconds",
    "wait_seconds", "hidden_fraction", "final_loss", "metric_value",
)


def run_dist_many(
    configs: list[DistConfig], launch_options: dict[str, Any] | None = None,
    timeout_s: float = DEFAULT_RUN_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Run ``configs`` (one world size) in one set of rank processes; rank 0's results."""
    if not configs:
        return []
    for c in configs:
        c.validate()
    sizes = {c.world_size for c in configs}
    if len(sizes) != 1:
        raise ConfigError(f"run_dist_many needs one world size, got {sorted(sizes)}")
    if configs[0].world_size > _MAX_LOCAL_RANKS:
        raise ConfigError(
            f"invalid world-size: {configs[0].world_size} processes on this host (at most "
            f"{_MAX_LOCAL_RANKS}); across hosts, start one rank per process with torchrun"
        )
    try:
        per_rank = launch(configs[0].world_size, rank_entry_dicts,
                          [asdict(c) for c in configs], timeout_s=timeout_s,
                          collective_timeout_s=min(c.collective_timeout_s for c in configs),
                          **(launch_options or {}))
    except RankFailure as exc:
        raise RankFailure(f"{exc}{_resume_hint(configs)}") from None
    results = []
    for i, _ in enumerate(configs):
        result = dict(per_rank[0][i])
        result["ranks"] = [
            {k: r[i][k] for k in ("rank", "wall_seconds", "compute_seconds", "wait_seconds",
                                  "comm_seconds", "final_checksum", "link_mbps",
                                  "checkpoints", "checkpoint_seconds")}
            for r in per_rank
        ]
        result["seconds_per_step"] = result["wall_seconds"] / result["steps"]
        results.append(result)
    return results


def _resume_hint(configs: list[DistConfig]) -> str:
    """Where a failed run can resume from: its newest complete checkpoint, if it wrote one."""
    for config in configs:
        root = Path(config.checkpoint_dir) if config.checkpoint_dir else None
        cuts = sorted(root.glob("step-*/COMPLETE")) if root is not None else []
        if cuts:
            return f" (the newest complete checkpoint is {cuts[-1].parent}: add --resume)"
    return ""


def rank_entry_dicts(
    rank: int, world_size: int, configs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What each rank of :func:`run_dist_many` runs: ``rank_entry_many`` of the configurations.

    They cross :func:`launch` as ``dataclasses.asdict`` dicts because launch reads payloads
    with ``torch.load(weights_only=True)``, which builds no class instances; they become
    :class:`DistConfig` again here (rather than allow-listing the class in every load).
    """
    return rank_entry_many(rank, world_size, [DistConfig(**c) for c in configs])


def run_dist(
    config: DistConfig, launch_options: dict[str, Any] | None = None,
    timeout_s: float = DEFAULT_RUN_TIMEOUT_S,
) -> dict[str, Any]:
    """One distributed run; rank 0's result (see :data:`JSON_KEYS`) plus per-rank clocks."""
    return run_dist_many([config], launch_options, timeout_s)[0]


def result_json(result: dict[str, Any]) -> dict[str, Any]:
    """What ``sgdlab dist --json`` prints: the required keys first, then the rest (no curves)."""
    out = {k: result[k] for k in JSON_KEYS}
    out.update({k: v for k, v in result.items() if k not in out and k not in ("losses",)})
    for k, v in list(out.items()):
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
    return out


def under_torchrun() -> bool:
    """Whether this process is a rank that ``torchrun`` started."""
    import os

    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


