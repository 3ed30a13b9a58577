"""The typed configurations of a run, and their validation: :class:`RunConfig`, what they all
share, and :class:`TrainConfig` (one process), :class:`DistConfig` (the ranks of ``sgdlab
dist``) and :class:`HogwildRunConfig` (one Hogwild! run). Each field's :func:`option` metadata
is its command-line option. A config is built by keyword.

The ``sgdlab`` command builds its options from these classes whatever command it runs, so this
module loads no torch: what validation needs of the methods it imports when it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sgdlab.errors import ConfigError, StoreError
from sgdlab.run.store import DEFAULT_DB

if TYPE_CHECKING:
    from sgdlab.distributed.comm import Injection

SCHEDULES = ("constant", "diminishing", "step")
# What a NaN or infinite loss or gradient does (sgdlab.run.finite): end the run, or skip the step.
POLICIES = ("stop", "skip")
# sgdlab.distributed.comm.DEFAULT_COLLECTIVE_TIMEOUT_S, which the test of this module checks:
# the CLI reads this default without loading torch.
DEFAULT_COLLECTIVE_TIMEOUT_S = 60.0
# Seconds before a hung local run is stopped (``sgdlab dist --timeout``); the launcher's own
# default (300 s) is for its bare API.
DEFAULT_RUN_TIMEOUT_S = 600.0

# Fields that change nothing about the trajectory: left out of the run's key, so a resumed run
# may, say, write its checkpoints at another interval.
_NOT_IN_KEY = (
    "out",
    "resume",
    "db",
    "progress",
    "checkpoint_every",
    "suite",
    "eval_every",
    "log_every",
    # What a NaN does: a run that never meets one is the same under either policy, and a run
    # stopped by a NaN may be resumed with ``skip`` to step over the batch that caused it.
    "on_nonfinite",
)


def option(
    help: str, *flags: str, name: str = "", cli_type: Any = None, cli_default: Any = ...,
    parse: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """A field's command-line option (``sgdlab.cli`` builds it): its help line, and where they
    differ from the field's, its flags (default ``--field-name``), parameter name, type and
    default, and ``parse``, which turns the option's value into the field's."""
    meta: dict[str, Any] = {"help": help, "flags": flags, "name": name}
    if cli_type is not None:
        meta["cli_type"] = cli_type
    if cli_default is not ...:
        meta["cli_default"] = cli_default
    if parse is not None:
        meta["parse"] = parse
    return meta


def check_output_paths(db: Path | None = None, out: Path | None = None) -> None:
    """Refuse, creating nothing, a ``--db`` or ``--out`` that cannot be written: a suite
    checks them before its first run, not after hours of runs."""
    for path, what, folder in ((db, "--db", False), (out, "--out", True)):
        if path is None:
            continue
        path = Path(path)
        if path.exists() and path.is_dir() != folder:
            kind = "a folder" if path.is_dir() else "a file"
            raise ConfigError(f"invalid {what} {path}: it is {kind}")
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"invalid {what} {path}: {parent} is a file, not a folder")
    if db is not None and Path(db).is_file():  # read only: an existing file must be a database
        try:
            with contextlib.closing(sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro",
                                                    uri=True)) as conn:
                conn.execute("PRAGMA schema_version")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open results database {db}: {exc}") from None


@dataclass(kw_only=True)
class RunConfig:
    """What every run has: a workload and its options, a step size, a number of steps, a batch
    and a seed, with :class:`TrainConfig`'s defaults (a subclass redefines a field whose default
    or meaning differs); the checks they share; and the run's key in the store.

    Built by keyword only: the subclasses' fields are in no order a call could rely on.
    """

    # Fields that change nothing about the trajectory: left out of the run's key.
    not_in_key: ClassVar[tuple[str, ...]] = ()
    # Fields added after runs were stored: in the key only when not at their default, so that
    # the runs stored before them keep their keys.
    key_when_set: ClassVar[tuple[str, ...]] = ()
    # Integers beyond steps and batch_size (>= 1) and seed (>= 0) that validate checks.
    at_least_one: ClassVar[tuple[str, ...]] = ()
    at_least_zero: ClassVar[tuple[str, ...]] = ()

    workload: str = field(metadata=option("Workload name (see `sgdlab list`)."))
    lr: float = field(default=0.1, metadata=option("Learning rate."))
    steps: int = field(default=1000, metadata=option("Optimizer steps."))
    batch_size: int = field(default=64, metadata=option("Samples per step."))
    seed: int = field(default=0, metadata=option("Seed of the model, the batches and the RNG."))
    workload_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """The checks every run shares: its integers are integers in range, ``lr`` >= 0."""
        positive = ("steps", "batch_size", *self.at_least_one)
        counts = (*positive, "seed", *self.at_least_zero)
        for name in counts:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"invalid {name.replace('_', '-')}: {value!r} (an integer)")
        for name in counts:
            least = 1 if name in positive else 0
            if getattr(self, name) < least:
                raise ConfigError(
                    f"invalid {name.replace('_', '-')}: {getattr(self, name)} (must be >= {least})"
                )
        if isinstance(self.lr, bool) or not math.isfinite(self.lr) or self.lr < 0:
            raise ConfigError(f"invalid lr: {self.lr}")

    def key(self) -> str:
        """A short hash of everything that determines the trajectory."""
        defaults = {f.name: f.default for f in fields(self) if f.name in self.key_when_set}
        d = {k: v for k, v in asdict(self).items() if k not in self.not_in_key
             and not (k in defaults and json.dumps(v) == json.dumps(defaults[k]))}
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    """One training run. ``optimizer_options`` and ``workload_options`` come from ``--set``.

    ``on_nonfinite`` is what a NaN or infinite loss or gradient does: ``"stop"`` the run (the
    default) or ``"skip"`` the step; see :mod:`sgdlab.run.finite`.
    """

    not_in_key = _NOT_IN_KEY
    key_when_set = ("warmup", "milestones", "gamma")
    at_least_zero = ("eval_every", "log_every", "checkpoint_every", "threads")

    optimizer: str = field(default="sgd", metadata=option("Optimizer name (see `sgdlab list`)."))
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    schedule: str = field(
        default="constant", metadata=option(
            "constant; diminishing: lr = alpha/(mu(t+E)); step: lr, then times --gamma at each "
            "of --milestones (default lr/10 from half the steps and lr/100 from three "
            "quarters, the step decay of Zhang, Qu et al.).")
    )
    warmup: float = field(default=0.0, metadata=option(
        "Linear lr warm-up over this fraction of the steps (constant and step schedules)."))
    milestones: tuple[float, ...] = field(default=(0.5, 0.75), metadata=option(
        "Fraction of the steps where the step schedule decays (repeat; default 0.5, 0.75).",
        cli_type=list[float] | None, cli_default=None,
        parse=lambda v: tuple(v) if v else (0.5, 0.75)))
    gamma: float = field(default=0.1, metadata=option(
        "Factor of the step schedule at each milestone."))
    mu: float | None = field(default=None, metadata=option("Strong convexity (diminishing).",
                                                           "--mu"))
    L: float | None = field(default=None, metadata=option("Smoothness (diminishing).", "--L"))
    alpha: float = field(default=2.0, metadata=option("alpha > 1 of the diminishing schedule."))
    eval_every: int = field(default=0, metadata=option("Evaluate every N steps (0: ten times)."))
    log_every: int = 0
    checkpoint_every: int = field(
        default=0, metadata=option("Checkpoint every N steps (0: never).")
    )
    out: Path | None = field(default=None, metadata=option("Folder for logs and checkpoints."))
    resume: bool = field(
        default=False, metadata=option("Continue the newest unfinished run in --out.")
    )
    db: Path = field(default=DEFAULT_DB, metadata=option("Results database (SQLite).", "--db"))
    device: str = field(default="cpu", metadata=option("cpu or cuda[:N]."))
    threads: int = field(default=0, metadata=option("torch threads (0: torch's default)."))
    suite: str = ""
    progress: bool | None = None
    on_nonfinite: str = field(default="stop", metadata=option(
        "stop: a NaN or Inf loss or gradient ends the run; skip: that step is undone and counted "
        "(too many in a row end the run)."
    ))

    def validate(self) -> None:
        super().validate()
        if "lr" in self.optimizer_options:
            raise ConfigError("give the learning rate with --lr, not --set lr=...")
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"invalid schedule {self.schedule!r}; choose {' or '.join(SCHEDULES)}"
            )
        if self.schedule == "constant" and (self.mu is not None or self.L is not None):
            raise ConfigError("--mu and --L only apply with --schedule diminishing")
        self._validate_decay()
        if self.on_nonfinite not in POLICIES:
            raise ConfigError(
                f"invalid on-nonfinite {self.on_nonfinite!r}; choose {' or '.join(POLICIES)}"
            )
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"invalid device {self.device!r}; use cpu or cuda[:N]")

    def _validate_decay(self) -> None:
        """Warm-up, milestones and gamma: in range, and only with a schedule that uses them."""
        w = self.warmup
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < 1:
            raise ConfigError(f"invalid warmup: {w!r} (a fraction of the steps, 0 <= it < 1)")
        if w and self.schedule == "diminishing":
            raise ConfigError("--warmup applies to the constant and step schedules")
        ms = self.milestones
        if not isinstance(ms, tuple | list) or not all(
            isinstance(m, int | float) and not isinstance(m, bool) and 0 < m < 1 for m in ms
        ) or any(a >= b for a, b in zip(ms, ms[1:], strict=False)):
            raise ConfigError(f"invalid milestones: {ms!r} (increasing fractions in (0, 1))")
        g = self.gamma
        if isinstance(g, bool) or not isinstance(g, int | float) or not 0 <= g < math.inf:
            raise ConfigError(f"invalid gamma: {g!r} (a finite factor >= 0)")
        default = {f.name: f.default for f in fields(self)}
        if self.schedule != "step" and (tuple(ms) != default["milestones"]
                                        or g != default["gamma"]):
            raise ConfigError("--milestones and --gamma only apply with --schedule step")

    def lr_factor(self) -> Any:
        """The factor of the lr at each step (a ``LambdaLR`` lambda) when ``warmup`` is set,
        else ``None`` (the step schedule alone is torch's ``MultiStepLR``, at
        :meth:`decay_steps`)."""
        if not self.warmup:
            return None
        from sgdlab.optim.schedules import WarmupStepDecay

        return WarmupStepDecay(round(self.warmup * self.steps), tuple(self.decay_steps()),
                               self.gamma)

    def decay_steps(self) -> list[int]:
        """The steps where the step schedule multiplies the lr by ``gamma`` (none for the
        others): ``int(fraction * steps)``, so the default is steps // 2 and 3 * steps // 4."""
        if self.schedule != "step":
            return []
        return [int(m * self.steps) for m in self.milestones]

    def out_dir(self) -> Path:
        """``--out``, or ``sgdlab-out/<workload>-<optimizer>-s<seed>-<key>``."""
        if self.out is not None:
            return Path(self.out)
        safe = self.optimizer.replace(":", "_")
        return Path("sgdlab-out") / f"{self.workload}-{safe}-s{self.seed}-{self.key()}"

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# Fields that change nothing about the trajectory: a run may resume with other values (more
# steps extend it: no schedule depends on the step count).
_DIST_NOT_IN_KEY = ("steps", "eval_every", "eval_samples", "checkpoint_every", "checkpoint_dir",
               "resume", "collective_timeout_s")


@dataclass(kw_only=True)
class DistConfig(RunConfig):
    """One distributed run; ``batch_size`` is per rank."""

    not_in_key = _DIST_NOT_IN_KEY
    at_least_one = ("world_size", "tau")
    at_least_zero = ("eval_every", "eval_samples", "checkpoint_every")

    algo: str = field(metadata=option("sync, local, overlap, easgd, cocod or torch-local."))
    world_size: int = field(default=2, metadata=option("Ranks to spawn on this host."))
    workload: str = field(default="cnn-fmnist", metadata=option("Workload (see `sgdlab list`)."))
    optimizer: str = field(default="sgd", metadata=option("Inner optimizer of every rank."))
    lr: float = field(default=0.05, metadata=option("Learning rate of the inner optimizer."))
    batch_size: int = field(default=32, metadata=option("Samples per step, per rank."))
    tau: int = field(default=2, metadata=option("Local steps per communication round."))
    alpha: float = field(default=0.6, metadata=option("Pull-back or elastic weight."))
    anchor_momentum: float = field(default=0.0,
                                   metadata=option("Anchor momentum beta (overlap)."))
    steps: int = field(default=200, metadata=option("Local steps per rank."))
    seed: int = field(default=0, metadata=option("Seed of the model, partition and batches."))
    partition: str = field(default="iid", metadata=option("iid or dirichlet:<alpha>."))
    bandwidth_mbps: float = field(default=0.0, metadata=option("Injected link rate (0: none)."))
    # > 0: a link on which an all-reduce takes this many local steps
    link_steps: float = field(default=0.0, metadata=option(
        "Injected link on which an all-reduce takes N local steps."))
    latency_ms: float = field(default=0.0, metadata=option("Injected latency per collective."))
    straggler_prob: float = field(default=0.0, metadata=option("Chance a step is slowed."))
    straggler_slowdown: float = field(default=1.0, metadata=option("How many times slower."))
    eval_every: int = field(default=0, metadata=option("Evaluate every N steps (0: five times)."))
    eval_samples: int = 2000  # test and training samples each evaluation uses (0: all)
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    # > 0: a consistent cut every N steps, into checkpoint_dir
    checkpoint_every: int = field(default=0, metadata=option(
        "Checkpoint every rank every N steps (0: never)."))
    checkpoint_dir: str = field(default="", metadata=option(
        "Folder of the run's checkpoints, final model and result.", cli_type=Path | None,
        cli_default=None))
    # continue from the newest cut in checkpoint_dir
    resume: bool = field(default=False, metadata=option(
        "Continue from the newest checkpoint in --checkpoint-dir."))
    # a peer silent this long fails the run
    collective_timeout_s: float = field(default=DEFAULT_COLLECTIVE_TIMEOUT_S, metadata=option(
        "Seconds a rank waits for a silent peer before failing.", name="collective_timeout"))

    def validate(self) -> None:
        from sgdlab.distributed import ALGORITHMS

        if self.algo not in ALGORITHMS:
            raise ConfigError(
                f"unknown algo {self.algo!r}; choose one of {', '.join(ALGORITHMS)}"
            )
        super().validate()
        if not math.isfinite(self.link_steps) or self.link_steps < 0:
            raise ConfigError(f"invalid link-steps: {self.link_steps}")
        if self.link_steps and self.bandwidth_mbps:
            raise ConfigError("give --link-steps or --bandwidth-mbps, not both")
        if (self.checkpoint_every or self.resume) and not self.checkpoint_dir:
            raise ConfigError("--checkpoint-every and --resume need --checkpoint-dir")
        if not math.isfinite(self.collective_timeout_s) or self.collective_timeout_s <= 0:
            raise ConfigError(f"invalid collective-timeout: {self.collective_timeout_s}")
        if "lr" in self.optimizer_options:
            raise ConfigError("give the learning rate with --lr, not --set lr=...")
        # Unknown names and bad hyperparameters: one line here, not a failure in every rank.
        import torch

        from sgdlab.optim import load_optimizer
        from sgdlab.workloads.registry import workload_options

        unknown = sorted(set(self.workload_options) - set(workload_options(self.workload)))
        if unknown:
            raise ConfigError(f"workload {self.workload!r} has no option {', '.join(unknown)}")
        load_optimizer(self.optimizer, [torch.nn.Parameter(torch.zeros(1))], lr=self.lr,
                       **self.optimizer_options)
        # The algorithms check these too, but inside the ranks: a bad one should not spawn them.
        if not (math.isfinite(self.alpha) and 0 <= self.alpha <= 1) or (
            self.algo == "easgd" and self.alpha == 0
        ):
            raise ConfigError(f"invalid alpha: {self.alpha} (need 0 <= alpha <= 1; easgd > 0)")
        if not (math.isfinite(self.anchor_momentum) and 0 <= self.anchor_momentum < 1):
            raise ConfigError(f"invalid anchor-momentum: {self.anchor_momentum} (need 0 <= it < 1)")
        if self.algo == "sync" and self.tau != 1:
            self.tau = 1  # sync communicates every step by definition
        partition_alpha(self.partition)
        self.injection()

    def injection(self) -> Injection:
        from sgdlab.distributed.comm import Injection

        try:
            return Injection(self.bandwidth_mbps, self.latency_ms, self.straggler_prob,
                             self.straggler_slowdown, self.seed)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclass(kw_only=True)
class LaunchConfig:
    """How ``sgdlab dist`` starts its ranks on this host; no part of the run (nor of its key)."""

    timeout: float = field(default=DEFAULT_RUN_TIMEOUT_S,
                           metadata=option("Seconds before a hung run is stopped."))
    testbed: bool = field(default=False,
                          metadata=option("Run each rank in its testbed namespace."))
    addr: str = field(default="127.0.0.1",
                      metadata=option("Rendezvous address (a free port is picked)."))


def partition_alpha(spec: str) -> float | None:
    """``"iid"`` → None; ``"dirichlet:0.5"`` → 0.5.

    >>> partition_alpha("dirichlet:0.5"), partition_alpha("iid")
    (0.5, None)
    """
    if spec == "iid":
        return None
    kind, _, value = spec.partition(":")
    try:
        alpha = float(value)
    except ValueError:
        alpha = float("nan")
    if kind != "dirichlet" or not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"invalid partition {spec!r}; use iid or dirichlet:<alpha > 0>")
    return alpha


@dataclass(kw_only=True)
class HogwildRunConfig(RunConfig):
    """One ``sgdlab hogwild`` run: the arguments of :func:`hogwild_once`, which checks them in
    Hogwild!'s own words (``sgdlab hogwild`` keeps those errors, so it does not call
    :meth:`validate`)."""

    workers: int = field(default=2, metadata=option("Lock-free worker processes."))
    steps: int = field(default=100_000, metadata=option("Updates by all workers together."))
    lr: float = field(default=0.1, metadata=option("Constant step (ignored when diminishing)."))
    schedule: str = field(default="constant",
                          metadata=option("constant, or diminishing: alpha/(mu(t+E))."))
    mu: float | None = field(default=None, metadata=option("Strong convexity.", "--mu"))
    L: float | None = field(default=None, metadata=option("Component smoothness.", "--L"))
    alpha: float = field(default=2.0, metadata=option("alpha > 1 of the diminishing step."))
    batch_size: int = field(default=1, metadata=option("Samples per update."))
    seed: int = field(default=0, metadata=option("Seed of the model, the shards and the order."))
    device: str = field(default="cpu", metadata=option("cpu, or cuda[:N] with --allow-cuda."))
    allow_cuda: bool = field(default=False, metadata=option(
        "Run lock-free on a CUDA model (no guarantee).", "--allow-cuda"))
