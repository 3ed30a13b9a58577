"""Optimizers (``torch.optim.Optimizer`` subclasses), schedulers and the optimizer registry."""

from sgdlab.optim.registry import (
    OptimizerSpec,
    load_optimizer,
    optimizer_names,
    register_optimizer,
)
from sgdlab.optim.schedules import DiminishingLR

__all__ = [
    "DiminishingLR",
    "OptimizerSpec",
    "load_optimizer",
    "optimizer_names",
    "register_optimizer",
]
