"""Checkpoints written atomically and read back without executing pickles.

``save_checkpoint`` writes to a temporary file in the same folder, flushes and fsyncs it,
renames it over the target and fsyncs the folder: a reader sees the old checkpoint or the new
one, never half of one, whatever kills the writer. ``load_checkpoint`` reads with
``torch.load(weights_only=True)``, which refuses any object other than tensors and plain
containers, and turns every failure into one :class:`~sgdlab.errors.CheckpointError` line.

This module sits beside ``errors``: every package may use it.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from sgdlab.errors import CheckpointError

FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never seen half-written."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Let ``write`` fill a temporary file beside ``path``, fsync it, rename it over ``path``
    and fsync the folder: readers see the old file or the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Serialise ``state`` (tensors and plain containers only) atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_reason(exc: BaseException) -> str:
    """One informative line for a failed ``torch.load(weights_only=True)``.

    torch's refusal spans several lines, is coloured, advises loading with
    ``weights_only=False`` (never what we want: that runs the file's code) and puts the reason
    after a mark; this returns the reason alone.

    >>> load_reason(RuntimeError("Weights only load failed. Re-running with weights_only=False "
    ...     "will likely succeed. WeightsUnpickler error: Unsupported global: GLOBAL os.system"))
    'Unsupported global: GLOBAL os.system'
    """
    text = _ANSI.sub("", str(exc))
    _, marked, after = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (after if marked else text).splitlines() if line.strip()]
    return lines[0].split(". Please")[0] if lines else type(exc).__name__


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, refusing anything else."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # torch.load does not check the zip's CRC-32s: a flipped bit in a tensor loads silently.
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise ValueError(f"CRC-32 mismatch in {bad}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} is unreadable (corrupt, truncated or not ours): {load_reason(exc)}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not an sgdlab checkpoint (format {FORMAT_VERSION})")
    return state
