"""Consistent distributed checkpoints: every rank's state at the same step, never half of one.

A checkpoint of a distributed run is a *cut*: the state of every rank after the same local step
``s``, each in its own file ``<root>/step-<s>/rank-<r>.pt``, written atomically
(:func:`sgdlab.checkpoint.save_checkpoint`: temp file, fsync, rename). All ranks checkpoint at
the same steps, since every rank takes the same number of local steps; an algorithm's state
(anchors, centres, an average still in flight, which ``state_dict`` waits for) is part of it.

**Commit.** After writing its file a rank enters a barrier; once every rank has passed it, cut
``s`` is complete everywhere, rank 0 marks it with ``step-<s>/COMPLETE`` (for people and tools)
and each rank deletes its own files older than the previous complete cut, so two complete cuts
are always on disk.

**Resume** needs no shared file system: each rank offers the newest step it holds a file for
and the ranks take the least of these (one MIN all-reduce). Every rank holds that step: a rank
whose newest file is ``s`` holds the complete cut before ``s`` too, and a cut is pruned only
after a newer one is complete everywhere. A cut some rank never finished writing is therefore
never picked up, and a torn file cannot exist. Each rank then checks that its file belongs to
this configuration, world size and rank.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from sgdlab.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from sgdlab.distributed.comm import Comm
from sgdlab.errors import CheckpointError, ConfigError

COMPLETE = "COMPLETE"
MODEL = "model.pt"
RESULT = "result.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def rank_file(root: Path, step: int, rank: int) -> Path:
    return step_dir(root, step) / f"rank-{rank}.pt"


def steps_on_disk(root: Path, rank: int) -> list[int]:
    """The steps for which ``rank`` has a file under ``root``, oldest first."""
    if not root.is_dir():
        return []
    steps = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / f"rank-{rank}.pt").is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


class CutStore:
    """The checkpoints of one rank of one run under ``root`` (see the module docstring)."""

    def __init__(self, root: Path, comm: Comm, key: str) -> None:
        self.root, self.comm, self.key = Path(root), comm, key
        self._complete: list[int] = []

    def check_fresh(self) -> None:
        """Refuse to start a new run over another run's checkpoints."""
        if self.root.is_dir() and any(_STEP_DIR.match(p.name) for p in self.root.iterdir()):
            raise ConfigError(
                f"checkpoint dir {self.root} already holds checkpoints: pass --resume to continue "
                "that run, or choose another --checkpoint-dir"
            )

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Write this rank's part of cut ``step``, then commit the cut (a collective)."""
        save_checkpoint(
            {"key": self.key, "step": step, "rank": self.comm.rank,
             "world_size": self.comm.world_size, **state},
            rank_file(self.root, step, self.comm.rank),
        )
        self.comm.barrier()  # past it, every rank's file of this cut is on disk
        if self.comm.rank == 0:
            marker = {"step": step, "world_size": self.comm.world_size, "key": self.key}
            atomic_write_bytes(step_dir(self.root, step) / COMPLETE, json.dumps(marker).encode())
        self._complete.append(step)
        self._prune(keep_from=self._complete[-2] if len(self._complete) > 1 else step)

    def latest(self) -> int | None:
        """The newest step every rank holds a file for (a collective), or None."""
        mine = steps_on_disk(self.root, self.comm.rank)
        step = self.comm.min_int(mine[-1] if mine else -1)
        if step < 0:
            return None
        if step not in mine:  # cannot happen with files written by save(); refuse, don't guess
            raise CheckpointError(
                f"rank {self.comm.rank} has no checkpoint of step {step} under {self.root}"
            )
        return step

    def load(self, step: int) -> dict[str, Any]:
        """This rank's state at cut ``step``, checked against this run."""
        path = rank_file(self.root, step, self.comm.rank)
        state = load_checkpoint(path)
        if state.get("key") != self.key:
            raise CheckpointError(
                f"checkpoint {path} belongs to another configuration; resume with the "
                "arguments of the run that wrote it"
            )
        if state.get("world_size") != self.comm.world_size or state.get("rank") != self.comm.rank:
            raise CheckpointError(
                f"checkpoint {path} was written by rank {state.get('rank')} of "
                f"{state.get('world_size')}; this is rank {self.comm.rank} of "
                f"{self.comm.world_size} (resume with the same world size)"
            )
        self._complete = [s for s in steps_on_disk(self.root, self.comm.rank) if s <= step]
        return state

    def _prune(self, keep_from: int) -> None:
        for step in steps_on_disk(self.root, self.comm.rank):
            if step < keep_from:
                rank_file(self.root, step, self.comm.rank).unlink(missing_ok=True)
                # The last rank out removes the folder; another may be doing so right now.
                folder = step_dir(self.root, step)
                try:
                    empty = not any(p.name.startswith("rank-") for p in folder.iterdir())
                except FileNotFoundError:
                    continue
                if empty:
                    shutil.rmtree(folder, ignore_errors=True)
        self._complete = [s for s in self._complete if s >= keep_from]


__all__ = ["COMPLETE", "MODEL", "RESULT", "CutStore", "rank_file", "step_dir", "steps_on_disk"]
