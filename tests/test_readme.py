"""The README's Python example runs as written and trains."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_learns() -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None
    assert len(code.group(1).strip().splitlines()) <= 14
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.group(1), str(README), "exec"), {})
    last = out.getvalue().strip().splitlines()[-1]
    accuracy = float(re.search(r"'accuracy': ([0-9.]+)", last).group(1))  # type: ignore[union-attr]
    assert accuracy > 0.75
