"""Generated bad input (hypothesis): see fuzz_helpers.py for the ci and thorough profiles."""

from __future__ import annotations

import sys
from pathlib import Path

# The tests import fuzz_helpers.py beside them (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent))
