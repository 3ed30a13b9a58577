"""What ``sgdlab bench smallbatch`` trains and records: the variants, the ablations, the plan and
one record per run; shared by the benchmark and its report, so that the report needs nothing
of the benchmark."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
    epochs: int = field(default=2, metadata=option("Epochs at every batch size."))
    seeds: int = field(default=3, metadata=option("Final seeds per variant (1..N)."))
    lams: tuple[float, ...] = field(default=(1e-2, 1e-1), metadata=option(
        "Extra lambdas a prox variant tries.", cli_type=str, cli_default="0.01,0.1",
        parse=lambda text: parse_list(text, float, "lams")))
    ablate_batch_sizes: tuple[int, ...] = field(default=(8,), metadata=option(
        "Batch sizes of the lambda=0 / no-decay ablation ('' for none).", cli_type=str,
        cli_default="8",
        parse=lambda text: parse_list(text, int, "ablation batch sizes") if text.strip() else ()))
    threads: int = 1
    bins_per_epoch: int = 10

    def validate(self) -> None:
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
