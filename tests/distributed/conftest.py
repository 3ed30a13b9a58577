"""The one helper every distributed test uses to start ranks (STYLE.md point 9).

``run_ranks(world_size, program, payload)`` runs ``program`` from ``rank_programs.py`` on
``world_size`` gloo ranks through :func:`sgdlab.distributed.launch`, on a free port, and returns
the per-rank results. A rank that fails or hangs ends the test with a ``RankFailure`` naming
it within ``timeout_s`` instead of hanging CI.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sgdlab.distributed.launch import launch

PROGRAMS = Path(__file__).with_name("rank_programs.py")
# The tests import helpers from rank_programs.py (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(PROGRAMS.parent))

RunRanks = Callable[..., list[Any]]


def _run_ranks(
    world_size: int, program: str, payload: Any = None, timeout_s: float = 90.0, **kw: Any
) -> list[Any]:
    return launch(world_size, f"{PROGRAMS}:{program}", payload, timeout_s=timeout_s,
                  collective_timeout_s=min(30.0, timeout_s), grace_s=2.0, **kw)


@pytest.fixture(scope="session")
def run_ranks() -> RunRanks:
    return _run_ranks
