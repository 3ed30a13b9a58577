"""docs/reliability.md names a test for every promise; each named test must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")}


def test_every_test_the_reliability_doc_names_exists() -> None:
    named = NAMED.findall(DOC.read_text())
    assert len(named) >= 20, "the doc should name the tests behind its promises"
    missing = []
    for file, name in named:
        path = ROOT / file
        if not path.is_file() or name not in _tests_in(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_every_promise_section_names_at_least_one_test() -> None:
    sections = re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]
    promises = [s for s in sections if not s.startswith("What is not promised")]
    assert len(promises) >= 6
    for section in promises:
        assert NAMED.search(section), f"no test named under '{section.splitlines()[0]}'"
