"""The configs: their defaults agree with the methods', and reading them loads no torch (the
CLI builds every command's options from them, for ``--help`` too)."""

from __future__ import annotations

import hashlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sgdlab.errors import ConfigError
from sgdlab.run import config


def test_the_collective_timeout_default_is_comm_s() -> None:
    from sgdlab.distributed.comm import DEFAULT_COLLECTIVE_TIMEOUT_S
    from sgdlab.distributed.launch import launch

    default = inspect.signature(launch).parameters["collective_timeout_s"].default
    assert config.DistConfig(algo="sync").collective_timeout_s == DEFAULT_COLLECTIVE_TIMEOUT_S
    assert config.DEFAULT_COLLECTIVE_TIMEOUT_S == DEFAULT_COLLECTIVE_TIMEOUT_S == default


def test_the_cli_and_the_configs_load_no_torch() -> None:
    code = "import sys, json, sgdlab.cli; print(json.dumps('torch' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False


def _main_key(fields: dict[str, object]) -> str:
    """The store key as main computed it before RunConfig: the sha256 of the sorted JSON of the
    trajectory fields, cut to 12 hex digits (restated here, so a change to either shows)."""
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def test_the_store_keys_are_unchanged() -> None:
    train = config.TrainConfig(workload="logreg-breast-cancer", lr=0.05, steps=30, seed=2,
                               optimizer_options={"momentum": 0.9}, checkpoint_every=5,
                               db=Path("x.db"), out=Path("o"), eval_every=7)
    # Every field main hashed for a TrainConfig: all but out, resume, db, progress,
    # checkpoint_every, suite, eval_every, log_every and on_nonfinite.
    assert train.key() == _main_key({
        "workload": "logreg-breast-cancer", "optimizer": "sgd", "lr": 0.05, "steps": 30,
        "batch_size": 64, "seed": 2, "optimizer_options": {"momentum": 0.9},
        "workload_options": {}, "schedule": "constant", "mu": None, "L": None, "alpha": 2.0,
        "device": "cpu", "threads": 0,
    })
    dist = config.DistConfig(algo="overlap", workload="logreg-breast-cancer", steps=40,
                             checkpoint_dir="ck", eval_samples=10, collective_timeout_s=5.0)
    # ... and for a DistConfig: all but steps, eval_every, eval_samples, checkpoint_every,
    # checkpoint_dir, resume and collective_timeout_s.
    assert dist.key() == _main_key({
        "algo": "overlap", "world_size": 2, "workload": "logreg-breast-cancer",
        "optimizer": "sgd", "lr": 0.05, "batch_size": 32, "tau": 2, "alpha": 0.6,
        "anchor_momentum": 0.0, "seed": 0, "partition": "iid", "bandwidth_mbps": 0.0,
        "link_steps": 0.0, "latency_ms": 0.0, "straggler_prob": 0.0, "straggler_slowdown": 1.0,
        "optimizer_options": {}, "workload_options": {},
    })


def test_the_configs_share_run_config_and_are_built_by_keyword() -> None:
    for cls in (config.TrainConfig, config.DistConfig, config.HogwildRunConfig):
        assert issubclass(cls, config.RunConfig)
        with pytest.raises(TypeError, match="positional"):
            cls("logreg-breast-cancer")  # type: ignore[misc]
    # The checks they share, in one voice.
    for cfg in (config.TrainConfig(workload="w", steps=0),
                config.DistConfig(algo="sync", workload="w", steps=0)):
        with pytest.raises(ConfigError, match=r"^invalid steps: 0 \(must be >= 1\)$"):
            cfg.validate()
    with pytest.raises(ConfigError, match=r"^invalid tau: 0 \(must be >= 1\)$"):
        config.DistConfig(algo="local", workload="w", tau=0).validate()
