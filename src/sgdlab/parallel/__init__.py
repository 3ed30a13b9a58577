"""Hogwild!: lock-free parallel SGD on one model in shared memory (``torch.multiprocessing``)."""

from sgdlab.parallel.hogwild import (
    HogwildConfig,
    HogwildResult,
    StepSize,
    epoch_order,
    run_hogwild,
    shard_indices,
    sparse_logistic_step,
)

__all__ = [
    "HogwildConfig",
    "HogwildResult",
    "StepSize",
    "epoch_order",
    "run_hogwild",
    "shard_indices",
    "sparse_logistic_step",
]
