"""The optimizer tests import their shared toy problem from ``mlbfgs_toys.py`` (pytest runs with
--import-mode=importlib, which does not put a test's folder on the path)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
