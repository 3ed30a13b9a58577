"""Shared pieces of the generated bad-input tests: profiles, the in-process CLI, file hashes.

Two hypothesis profiles, picked by ``SGDLAB_HYPOTHESIS_PROFILE``:

* ``ci`` (the default, part of ``make test``): a few cases per target, derandomized, no
  example database, no deadline: the same cases on every run, on any machine;
* ``thorough`` (``benchmarks/bench_fuzz.py``): at least 1000 cases per target.

Each test says how many cases ``ci`` gives it (cheap targets more, costly ones fewer) through
:func:`fuzz`. The profiles are applied per test, never loaded globally, so the suite's other
hypothesis tests keep their own settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("SGDLAB_HYPOTHESIS_PROFILE", "ci")
THOROUGH_EXAMPLES = int(os.environ.get("SGDLAB_FUZZ_EXAMPLES", "1000"))
_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "derandomize": True,
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
}
settings.register_profile("sgdlab-ci", max_examples=20, **_COMMON)
settings.register_profile("sgdlab-thorough", max_examples=THOROUGH_EXAMPLES, **_COMMON)
if PROFILE not in ("ci", "thorough"):
    raise RuntimeError(f"SGDLAB_HYPOTHESIS_PROFILE={PROFILE!r}: use ci or thorough")


def fuzz(ci: int) -> settings:
    """Settings for one target: ``ci`` cases under the ci profile, 1000 under thorough."""
    if PROFILE == "thorough":
        return settings(settings.get_profile("sgdlab-thorough"))
    return settings(settings.get_profile("sgdlab-ci"), max_examples=ci)


class Reached(BaseException):
    """Raised by a stub where real work (training, processes) would start: input that should
    have been refused got through validation. A BaseException, so no handler swallows it."""


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``sgdlab.cli.main(argv)`` in this process: (exit code, stdout, stderr)."""
    from sgdlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_one_error_line(code: int, err: str, argv: list[str] | str) -> str:
    """Exit 2 and exactly one line on stderr, ``error: ...``, no traceback."""
    lines = err.splitlines()
    assert code == 2, f"exit {code} (want 2) for {argv!r}; stderr: {err!r}"
    assert len(lines) == 1, f"{len(lines)} stderr lines (want 1) for {argv!r}: {err!r}"
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: "), (argv, err)
    assert "Traceback" not in err, (argv, err)
    return lines[0]


def assert_one_line(exc: BaseException) -> str:
    """The message of a user error: one non-empty line."""
    text = str(exc)
    assert text.strip(), f"empty message: {type(exc).__name__}"
    assert "\n" not in text, f"multi-line message: {text!r}"
    return text


def tree_digest(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` (or of a root that is a file), by path."""
    digest: dict[str, str] = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            digest[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return digest


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
