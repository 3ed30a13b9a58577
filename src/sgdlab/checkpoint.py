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
from collections.abc import Callable, Iterator
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


# --- before a checkpoint is written: nothing non-finite -----------------------------------


def nonfinite_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> str | None:
    """Where the model or the optimizer's state holds a NaN or an infinity, or ``None``.

    Called before a checkpoint is written; names the first bad tensor found (a parameter or a
    buffer by its name, optimizer state by its key and, for torch's layout, its parameter).
    """
    for name, tensor in model.state_dict().items():
        if _bad(tensor):
            kind = "parameter" if _is_param(model, name) else "buffer"
            return f"{kind} {name!r} has {nonfinite_kind(tensor)}"
    if optimizer is None:
        return None
    names = _optimizer_param_names(model, optimizer)
    for path, tensor in _tensors(optimizer.state_dict(), ()):
        if _bad(tensor):
            return f"optimizer state {_describe(path, names)} has {nonfinite_kind(tensor)}"
    return None


def _bad(tensor: torch.Tensor) -> bool:
    return (tensor.is_floating_point() or tensor.is_complex()) and not bool(
        torch.isfinite(tensor).all()
    )


def nonfinite_kind(tensor: torch.Tensor) -> str:
    return "nan" if bool(torch.isnan(tensor).any()) else "inf"


def _is_param(model: torch.nn.Module, name: str) -> bool:
    return name in dict(model.named_parameters())


def _tensors(obj: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, (*path, key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from _tensors(value, (*path, i))


def _optimizer_param_names(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[int, str]:
    """torch numbers a state dict's parameters over its groups in order: index -> name."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {i: by_id.get(id(p), f"#{i}") for i, p in enumerate(params)}


def _describe(path: tuple[Any, ...], names: dict[int, str]) -> str:
    # torch's layout ["state"][index][key], also nested in a wrapper (["inner"]["state"]...).
    for i in range(len(path) - 2):
        if path[i] == "state" and isinstance(path[i + 1], int) and path[i + 1] in names:
            key = ".".join(str(k) for k in path[i + 2 :])
            return f"{key!r} of parameter {names[path[i + 1]]!r}"
    return repr(".".join(str(k) for k in path))
