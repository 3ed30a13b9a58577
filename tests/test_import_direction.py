"""Imports run one way (docs/architecture.md)::

    cli → {experiments, testbed} → report → run → {optim, parallel, distributed, workloads,
    theory} → {errors, checkpoint}

Three checks, so the direction cannot erode silently: a fresh interpreter imports each package
and every module in it and we look at ``sys.modules``; every ``import`` in the source, lazy ones
inside functions too, names a package its own may use; and no two modules import each other,
directly or round a circle. Only ``distributed`` may import ``torch.distributed`` (checked in
the source, since ``import torch`` loads ``torch.distributed`` itself), and ``theory`` never
loads torch.
"""

from __future__ import annotations

import ast
import json
import re
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
    "__main__": {"cli"},  # ``python -m sgdlab``: the command and nothing else
}
# torch.distributed is called only through distributed/comm.py.
TORCH_DISTRIBUTED = {"distributed/comm.py"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods  # sgdlab.errors and sgdlab.checkpoint are modules: "packages" of one module


MODULES = _modules()


def _package(module: str) -> str:
    """``sgdlab.run.train`` → ``run``; ``sgdlab.errors`` → ``errors``; ``sgdlab`` → ``""``."""
    return module.split(".")[1] if "." in module else ""


def _loaded(package: str) -> tuple[set[str], bool]:
    names = sorted(m for m in MODULES if (m == f"sgdlab.{package}"
                   or m.startswith(f"sgdlab.{package}.")) and not m.endswith(".__main__"))
    code = (
        f"import importlib, sys, json\nfor m in {names!r}:\n    importlib.import_module(m)\n"
        "print(json.dumps([sorted(m for m in sys.modules if m.startswith('sgdlab.')), "
        "'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mods, torch_loaded = json.loads(out.stdout.splitlines()[-1])
    return {m.split(".")[1] for m in mods}, torch_loaded


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_loads_only_what_it_may(package: str) -> None:
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


def _sgdlab_imports(path: Path) -> set[str]:
    """The modules of ours ``path`` imports, anywhere in it (a package's attribute: the package)."""
    found = set()
    for name in _imports(path):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("sgdlab"):
            found.add(name)
    return found


def test_every_import_in_the_source_runs_one_way() -> None:
    wrong = []
    for module, path in MODULES.items():
        mine = _package(module)
        for target in _sgdlab_imports(path):
            theirs = _package(target)
            if theirs and theirs != mine and mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_no_import_circles() -> None:
    graph = {m: {t for t in _sgdlab_imports(p) if t != m and not t.startswith(m + ".")}
             for m, p in MODULES.items()}
    circles, done = [], set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            circles.append(path[path.index(m):] + [m])
            return
        if m in done:
            return
        for t in sorted(graph.get(m, ())):
            visit(t, [*path, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])
    assert not circles, circles


def _strings(path: Path) -> list[str]:
    """The string constants of ``path`` but its docstrings (prose may name any module)."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body and isinstance(node.body[0], ast.Expr)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docs]


def test_functions_named_by_strings_run_one_way() -> None:
    """A ``"sgdlab.x:function"`` string is an import the checks above cannot see, so it may name
    only what its module may import (the launcher takes the function itself, not its name)."""
    wrong = []
    for module, path in MODULES.items():
        mine = _package(module)
        for text in _strings(path):
            if re.fullmatch(r"sgdlab(\.\w+)+:\w+", text):
                theirs = _package(text.partition(":")[0])
                if theirs != mine and theirs not in ALLOWED[mine]:
                    wrong.append(f"{module} names {text}")
    assert not wrong, wrong


def test_only_distributed_imports_torch_distributed() -> None:
    offenders = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if str(p.relative_to(SRC)) not in TORCH_DISTRIBUTED
        and any(n == "torch.distributed" or n.startswith("torch.distributed.") for n in _imports(p))
    ]
    assert not offenders, f"torch.distributed imported outside distributed/comm.py: {offenders}"


def test_every_package_is_placed() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    assert packages == set(ALLOWED), sorted(packages ^ set(ALLOWED))


def test_the_checks_see_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from torch.distributed import all_reduce\n")
    assert "torch.distributed" in _imports(bad)
