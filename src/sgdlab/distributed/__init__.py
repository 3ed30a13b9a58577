"""Distributed training on ``torch.distributed``: Overlap Local-SGD and its baselines.

Every algorithm wraps any inner optimizer and plugs into the user's loop::

    opt = OverlapLocalSGD(model, torch.optim.SGD(model.parameters(), lr=0.1), tau=2, alpha=0.6)
    for x, y in loader:
        loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
"""

from sgdlab.distributed.cocod import CoCoDSGD
from sgdlab.distributed.comm import Comm, Handle, Injection
from sgdlab.distributed.core import CooperativeSGD, RoundStats
from sgdlab.distributed.easgd import EASGD
from sgdlab.distributed.exchange import BlockExchange
from sgdlab.distributed.launch import RankFailure, launch
from sgdlab.distributed.local_sgd import LocalSGD
from sgdlab.distributed.overlap import OverlapLocalSGD
from sgdlab.distributed.sync_sgd import SyncSGD
from sgdlab.distributed.torch_local_sgd import TorchPostLocalSGD

ALGORITHMS = {
    "sync": SyncSGD,
    "local": LocalSGD,
    "overlap": OverlapLocalSGD,
    "easgd": EASGD,
    "cocod": CoCoDSGD,
    "torch-local": TorchPostLocalSGD,
}

__all__ = [
    "ALGORITHMS",
    "BlockExchange",
    "EASGD",
    "CoCoDSGD",
    "Comm",
    "CooperativeSGD",
    "Handle",
    "Injection",
    "LocalSGD",
    "OverlapLocalSGD",
    "RankFailure",
    "RoundStats",
    "SyncSGD",
    "TorchPostLocalSGD",
    "launch",
]
