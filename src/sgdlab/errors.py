"""The errors sgdlab raises for bad input, missing data and broken files.

Every :class:`SgdlabError` carries a one-line message meant for a person; the CLI prints it as
``error: <message>`` and exits with status 2. Hyperparameter checks inside optimizers raise
plain :class:`ValueError`, as ``torch.optim`` does; the CLI reports those the same way.
"""

from __future__ import annotations


class SgdlabError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class ConfigError(SgdlabError, ValueError):
    """A bad name, value or combination of settings."""


class DataError(SgdlabError):
    """A data set is missing, truncated, corrupt or fails its checksum."""


class CheckpointError(SgdlabError):
    """A checkpoint is missing, unreadable, or does not match the run it should resume."""


class StoreError(SgdlabError):
    """The results database cannot be opened or written."""


class DivergenceError(SgdlabError):
    """Training met a NaN or an infinity: in the loss, a gradient, or the state to checkpoint."""


class CommError(SgdlabError):
    """A collective failed: a peer rank died, stalled past the timeout, or left the group."""


class TestbedError(SgdlabError):
    """The testbed cannot be built, found or removed (not root, no iproute2, a failed command)."""

    __test__ = False  # not a pytest test class, despite the name


class RankFailure(SgdlabError):
    """A rank of a distributed run exited with an error, or did not finish in time."""


class SolverError(SgdlabError):
    """A convex solver is missing or failed in a way that is not infeasibility."""


__all__ = [
    "CheckpointError",
    "CommError",
    "ConfigError",
    "DataError",
    "DivergenceError",
    "RankFailure",
    "SgdlabError",
    "SolverError",
    "StoreError",
    "TestbedError",
]
