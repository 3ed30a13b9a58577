"""Optimizers (``torch.optim.Optimizer`` subclasses), schedulers and the optimizer registry."""

from collections.abc import Iterable
from typing import Any

import torch

from sgdlab.optim._blocks import assign_blocks, module_blocks
from sgdlab.optim.clip import ClipGradNorm, clipped_sgd
from sgdlab.optim.mlbfgs import MLBFGS, DirectionExchange, MLBFGSConfig
from sgdlab.optim.proximal import Proximal
from sgdlab.optim.proximal_factory import make_proximal
from sgdlab.optim.registry import (
    OptimizerSpec,
    get_spec,
    load_optimizer,
    optimizer_names,
    register_optimizer,
    register_prefix,
)
from sgdlab.optim.schedules import DiminishingLR

# Proximal defaults: a constant λ = 1e-3 and windows of 10 steps running across epochs; tune λ
# for your problem. Not the authors' setting (λ_t = 0.1·lr₀/lr_t, the window restarted every
# epoch: lam=0.1, lam_schedule="authors", epoch_steps=<steps per epoch>), which stays one
# `--set` away. Under their own protocol (`sgdlab bench smallbatch --protocol authors`,
# benchmarks/RESULTS.md S3) their λ helped only where it rescued a rate too high for the plain
# optimizer (a rate still worse than tuned SGD), was neutral elsewhere and cost up to half a
# point (prox-Adam, batch 8); no prox variant beat both SGD and Adam. A default that strong
# would not serve users better; the weak one keeps prox-sgd/prox-adam close to their inner
# optimizer until λ is tuned.
PROX_DEFAULTS: dict[str, Any] = {"lam": 1e-3, "window": 10}


def _prox_factory(inner: Any) -> Any:
    def factory(params: Iterable[Any], **hparams: Any) -> torch.optim.Optimizer:
        return make_proximal(inner, params, **{**PROX_DEFAULTS, **hparams})

    return factory


register_optimizer(
    "mlbfgs", MLBFGS, "mL-BFGS: momentum L-BFGS, block-wise Hessian, sharded two-loop"
)
register_optimizer(
    "clip-sgd",
    clipped_sgd,
    "SGD with heavy ball on the globally clipped gradient, decoupled decay (mL-BFGS sans pairs)",
)
register_optimizer(
    "prox-sgd", _prox_factory("sgd"), "proximal windows around SGD with momentum (TRSGD)"
)
register_optimizer("prox-adam", _prox_factory("adam"), "proximal windows around Adam (TRAdam)")
register_prefix(
    "prox:",
    lambda name: OptimizerSpec(
        f"prox:{name}",
        _prox_factory(get_spec(name).factory),
        f"proximal windows around {name}",
        "sgdlab",
    ),
)

__all__ = [
    "MLBFGS",
    "ClipGradNorm",
    "PROX_DEFAULTS",
    "DiminishingLR",
    "DirectionExchange",
    "MLBFGSConfig",
    "assign_blocks",
    "module_blocks",
    "OptimizerSpec",
    "Proximal",
    "load_optimizer",
    "make_proximal",
    "optimizer_names",
    "register_optimizer",
]
