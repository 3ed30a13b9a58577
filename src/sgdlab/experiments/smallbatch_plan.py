"""What ``sgdlab bench smallbatch`` trains and records: the variants, the ablations, the plan and
one record per run; shared by the benchmark and its report, so that the report needs nothing
of the benchmark."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sgdlab.errors import ConfigError
from sgdlab.run.config import option

# Grid centres at batch 16, scaled by sqrt(b / 16); chosen from a pilot on mlp-mnist so that
# both a baseline's best rate and its prox variant's (about 3x higher: the harmonic decay)
# fall inside the grid.
LR_CENTRES = {"sgd": 0.025, "adam": 0.0025}


# variant -> (family, registry name, fixed optimizer options)
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sgd": ("sgd", "sgd", {"momentum": 0.9}),
    "prox-sgd": ("sgd", "prox-sgd", {}),
    "adam": ("adam", "adam", {}),
    "prox-adam": ("adam", "prox-adam", {}),
}


BASELINE_OF = {"prox-sgd": "sgd", "prox-adam": "adam"}


# label -> (the prox variant's setting it changes, whose tuned lr it runs at)
ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "λ=0": ({"lam": 0.0}, "prox"),
    "no decay": ({"inner_decay": "none"}, "baseline"),
}

PROTOCOLS = ("quick", "authors")

# The authors' protocol (huiqu18/TRAlgorithm): weight decay on every contender, the step lr
# decay (``TrainConfig.schedule="step"``), and for the prox variants their lambda schedule with
# lambda_0 = 0.1 and the window restarted at every epoch (epoch_steps, set per batch size).
AUTHORS_OPTIONS: dict[str, Any] = {"weight_decay": 1e-4}
AUTHORS_PROX_OPTIONS: dict[str, Any] = {"lam": 0.1, "lam_schedule": "authors"}

# The authors' ablations: "λ=0" keeps the in-window decay and the restarts without the term, at
# the prox variant's tuned lr; "mean lr" is the *baseline* optimizer at the prox variant's tuned
# lr times the mean in-window decay factor (smallbatch.mean_decay): the same average step.
AUTHORS_ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "λ=0": ({"lam": 0.0}, "prox"),
    "mean lr": ({}, "mean"),
}


def ablations(protocol: str) -> dict[str, tuple[dict[str, Any], str]]:
    """The ablations a protocol runs: label -> (changed settings, whose lr)."""
    return AUTHORS_ABLATIONS if protocol == "authors" else ABLATIONS


@dataclass
class SmallBatchPlan:
    """What ``sgdlab bench smallbatch`` trains; the defaults fit ~25 minutes on 2 cores."""

    workloads: tuple[str, ...] = field(default=("cnn-fmnist", "mlp-mnist"), metadata=option(
        "Comma-separated workloads.", cli_type=str, cli_default="cnn-fmnist,mlp-mnist",
        parse=lambda text: parse_list(text, str, "workloads")))
    batch_sizes: tuple[int, ...] = field(default=(8, 16, 128), metadata=option(
        "Comma-separated batch sizes.", cli_type=str, cli_default="8,16,128",
        parse=lambda text: parse_list(text, int, "batch sizes")))
    subset: int = field(default=2000, metadata=option("Training samples (a fixed seeded subset)."))
    validation: int = field(default=1000,
                            metadata=option("Held-out training samples for tuning."))
    test: int = field(default=0, metadata=option(
        "Test samples scoring the final runs, a fixed seeded subset; the training loss is then "
        "evaluated on as many training samples (0: the whole test set, and 1,000)."))
    epochs: int = field(default=2, metadata=option("Epochs at every batch size."))
    seeds: int = field(default=3, metadata=option("Final seeds per variant (1..N)."))
    lams: tuple[float, ...] = field(default=(1e-2, 1e-1), metadata=option(
        "Extra lambdas a prox variant tries.", cli_type=str, cli_default="0.01,0.1",
        parse=lambda text: parse_list(text, float, "lams")))
    ablate_batch_sizes: tuple[int, ...] = field(default=(8,), metadata=option(
        "Batch sizes of the lambda=0 / no-decay ablation ('' for none).", cli_type=str,
        cli_default="8",
        parse=lambda text: parse_list(text, int, "ablation batch sizes") if text.strip() else ()))
    protocol: str = field(default="quick", metadata=option(
        "quick: constant lr, our defaults; authors: weight decay 1e-4, step lr decay, their "
        "lambda schedule (lambda_0 = 0.1) and window restart, the lambda=0 and mean-lr "
        "ablations, accuracy per epoch and paired tests; an option not given takes the "
        "authors' value."))
    threads: int = 1
    bins_per_epoch: int = 10

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"invalid protocol {self.protocol!r}; choose quick or authors")
        if self.test < 0:
            raise ConfigError(f"invalid test: {self.test} (0 for the whole test set, or >= 1)")
        for name in ("subset", "validation", "epochs", "seeds", "threads", "bins_per_epoch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"invalid {name}: {getattr(self, name)} (must be >= 1)")
        if not self.workloads or not self.batch_sizes:
            raise ConfigError("smallbatch needs at least one workload and one batch size")
        for b in self.batch_sizes:
            if b < 1 or b > self.subset:
                raise ConfigError(f"invalid batch size: {b} (1 to subset={self.subset})")
        if not 1 <= len(self.lams) <= 4:
            raise ConfigError(f"invalid lams: {self.lams} (one to four values)")
        for lam in self.lams:
            if not math.isfinite(lam) or lam < 0:
                raise ConfigError(f"invalid lam: {lam}")
        for b in self.ablate_batch_sizes:
            if b not in self.batch_sizes:
                raise ConfigError(f"ablation batch size {b} is not among the batch sizes")


@dataclass
class Record:
    """One training run of the benchmark."""

    workload: str
    batch_size: int
    variant: str  # "sgd", "prox-sgd", …, or "prox-sgd λ=0" for an ablation
    role: str  # "tune", "final" or "ablation"
    seed: int
    lr: float
    options: dict[str, Any]
    steps: int
    steps_per_epoch: int
    run_id: int | None = None
    accuracy: float | None = None  # validation (tune) or test (final, ablation); None: diverged
    eval_loss: float | None = None
    train_loss: float | None = None
    ms_per_step: float | None = None


# ``sgdlab bench smallbatch --protocol authors`` with no other option: the authors' protocol
# (mlp-mnist at the size of MNIST less a validation slice, 20 epochs, 5 seeds). Days on two
# CPU cores; RESULTS.md says how it was scaled down to run here.
AUTHORS_PLAN = SmallBatchPlan(
    workloads=("mlp-mnist", "cnn-fmnist"), batch_sizes=(4, 8, 16), subset=55_000,
    validation=5_000, epochs=20, seeds=5, lams=(0.03, 0.3), ablate_batch_sizes=(4, 8, 16),
    protocol="authors",
)


def with_protocol_defaults(plan: SmallBatchPlan, given: set[str]) -> SmallBatchPlan:
    """Under ``protocol="authors"``, each setting not in ``given`` (the options the user set)
    takes :data:`AUTHORS_PLAN`'s, so ``--protocol authors`` alone runs the whole protocol and
    ``--epochs 4`` scales just that; the ablations then run at every batch size."""
    if plan.protocol != "authors":
        return plan
    kept = {f.name: getattr(AUTHORS_PLAN, f.name) for f in fields(SmallBatchPlan)
            if f.name not in given}
    plan = replace(plan, **kept)
    if "ablate_batch_sizes" in kept:
        plan = replace(plan, ablate_batch_sizes=plan.batch_sizes)
    return plan


def parse_list(text: str, kind: type, what: str) -> tuple[Any, ...]:
    """``"8,16"`` -> ``(8, 16)``; a bad item raises ``ConfigError`` naming ``what``.

    >>> parse_list("8, 16", int, "batch sizes")
    (8, 16)
    """
    try:
        values = tuple(kind(item.strip()) for item in text.split(",") if item.strip())
    except ValueError:
        raise ConfigError(f"invalid {what}: {text!r} (comma-separated {kind.__name__}s)") from None
    if not values:
        raise ConfigError(f"invalid {what}: {text!r} (empty)")
    return values
