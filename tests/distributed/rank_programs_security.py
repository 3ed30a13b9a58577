"""Rank programs of the launcher's security tests (``fn(rank, world_size, payload)``).

Not a test module: the tests name these functions by file path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist


def hold_after_init(rank: int, world_size: int, payload: dict[str, Any]) -> int:
    """Join the group, say ``pid-<rank>`` in ``payload["dir"]``, and stay in it (every socket
    of the group open) until the test writes ``go`` there."""
    folder = Path(payload["dir"])
    dist.barrier()  # every pair connected: gloo's sockets and the store's are all open
    tmp = folder / f".pid-{rank}"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, folder / f"pid-{rank}")
    deadline = time.monotonic() + payload.get("hold_s", 60.0)
    while not (folder / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    dist.barrier()
    return rank


def numpy_result(rank: int, world_size: int, payload: Any) -> dict[str, Any]:
    """A result that only a full unpickler could read back (a NumPy scalar)."""
    return {"rank": rank, "loss": np.float64(0.5)}
