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


def test_warmup_and_milestones_enter_the_key_only_when_set() -> None:
    """Runs stored before the fields keep their keys: the fields at their defaults, however
    written, leave the key as it was; set, they change it."""
    common = dict(workload="w", steps=100, schedule="step")
    plain = config.TrainConfig(**common).key()  # type: ignore[arg-type]
    assert config.TrainConfig(**common, warmup=0.0, milestones=[0.5, 0.75],  # type: ignore[arg-type]
                              gamma=0.1).key() == plain
    keys = {config.TrainConfig(**common, **kw).key()  # type: ignore[arg-type]
            for kw in ({"warmup": 0.05}, {"milestones": (0.3,)}, {"gamma": 0.5})}
    assert len(keys) == 3 and plain not in keys


def test_warmup_and_step_decay_of_a_run() -> None:
    cfg = config.TrainConfig(workload="w", steps=100, schedule="step", warmup=0.05,
                             milestones=(0.5, 0.9), gamma=0.2)
    cfg.validate()
    factor = cfg.lr_factor()
    assert cfg.decay_steps() == [50, 90]
    assert [round(factor(t), 6) for t in (0, 4, 49, 50, 90)] == [0.2, 1.0, 1.0, 0.2, 0.04]
    # The default step decay is torch's MultiStepLR at steps // 2 and 3 * steps // 4, as it was.
    assert config.TrainConfig(workload="w", steps=938, schedule="step").decay_steps() == [469, 703]
    assert config.TrainConfig(workload="w", schedule="step").lr_factor() is None


def test_the_runner_warms_the_lr_up(tmp_path: Path) -> None:
    """The runner's first step runs at lr / warm-up steps (LambdaLR sets it when built)."""
    from torch.optim.lr_scheduler import LambdaLR

    from sgdlab.run.train import SingleRun

    cfg = config.TrainConfig(workload="logreg-breast-cancer", lr=0.4, steps=40, warmup=0.1,
                             db=tmp_path / "r.db", out=tmp_path / "o", progress=False)
    run = SingleRun(cfg)
    run.build()
    run.store.close()
    assert isinstance(run.sched, LambdaLR)
    assert run.opt.param_groups[0]["lr"] == pytest.approx(0.4 / 4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"warmup": 1.0}, "invalid warmup: 1.0"),
    ({"warmup": -0.1}, "invalid warmup"),
    ({"warmup": 0.1, "schedule": "diminishing"}, "--warmup applies to the constant and step"),
    ({"schedule": "step", "milestones": (0.75, 0.5)}, "invalid milestones"),
    ({"schedule": "step", "milestones": (0.5, 1.0)}, "invalid milestones"),
    ({"schedule": "step", "gamma": -1.0}, "invalid gamma: -1.0"),
    ({"gamma": 0.5}, "--milestones and --gamma only apply with --schedule step"),
    ({"milestones": (0.3,)}, "--milestones and --gamma only apply with --schedule step"),
])
def test_bad_warmup_or_decay_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.TrainConfig(workload="w", **kwargs).validate()  # type: ignore[arg-type]
