"""Imports run one way (DESIGN.md): a fresh interpreter imports each package and we look at
``sys.modules``; and only ``distributed`` may import ``torch.distributed`` (checked in the source,
since ``import torch`` loads ``torch.distributed`` itself)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sgdlab"

BASE = {"errors", "checkpoint"}
METHODS = {"optim", "parallel", "distributed", "workloads", "theory"}
ALLOWED = {
    "errors": set(),
    "checkpoint": {"errors"},
    "theory": {"errors"},
    "optim": BASE,
    "workloads": BASE,
    "parallel": BASE | {"optim", "workloads"},
    "distributed": BASE | {"optim", "workloads"},
    "run": BASE | METHODS,
    "report": BASE | METHODS | {"run"},
    "experiments": BASE | METHODS | {"run", "report"},
    "testbed": BASE | METHODS | {"run", "report"},
    "cli": BASE | METHODS | {"run", "report", "experiments", "testbed"},
}


def _loaded(package: str) -> tuple[set[str], bool]:
    code = (
        f"import sys, json; import sgdlab.{package}; "
        "print(json.dumps([sorted(m for m in sys.modules if m.startswith('sgdlab.')), "
        "'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mods, torch_loaded = json.loads(out.stdout)
    return {m.split(".")[1] for m in mods}, torch_loaded


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    loaded, torch_loaded = _loaded(package)
    extra = loaded - {package} - ALLOWED[package]
    assert not extra, f"sgdlab.{package} pulls in {sorted(extra)}"
    if package in ("theory", "errors"):
        assert not torch_loaded, f"sgdlab.{package} must not import torch"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_only_distributed_imports_torch_distributed() -> None:
    offenders = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if p.relative_to(SRC).parts[0] != "distributed"
        and any(n == "torch.distributed" or n.startswith("torch.distributed.") for n in _imports(p))
    ]
    assert not offenders, f"torch.distributed imported outside distributed/: {offenders}"


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from torch.distributed import all_reduce\n")
    assert "torch.distributed" in _imports(bad)
