"""The configs: their defaults agree with the methods', and reading them loads no torch (the
CLI builds every command's options from them, for ``--help`` too)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

from sgdlab.run import config


def test_the_collective_timeout_default_is_comm_s() -> None:
    from sgdlab.distributed.comm import DEFAULT_COLLECTIVE_TIMEOUT_S
    from sgdlab.distributed.launch import launch

    default = inspect.signature(launch).parameters["collective_timeout_s"].default
    assert config.DistConfig("sync").collective_timeout_s == DEFAULT_COLLECTIVE_TIMEOUT_S
    assert config.DEFAULT_COLLECTIVE_TIMEOUT_S == DEFAULT_COLLECTIVE_TIMEOUT_S == default


def test_the_cli_and_the_configs_load_no_torch() -> None:
    code = "import sys, json, sgdlab.cli; print(json.dumps('torch' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False
