"""Programs the distributed tests run on every rank (``fn(rank, world_size, payload)``).

Not a test module: ``conftest.run_ranks`` names these functions by file path.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

import torch

from sgdlab.distributed import ALGORITHMS, Comm, Injection

SYNTH_N = 256


def synthetic_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A logistic-regression problem in float64, the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SYNTH_N, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, generator=g, dtype=torch.float64)
    y = (x @ w + 0.3 * torch.randn(SYNTH_N, generator=g, dtype=torch.float64) > 0).double()
    return x, y


def make_model(seed: int = 0) -> torch.nn.Module:
    """A linear layer and a BatchNorm (its running statistics are floating-point buffers)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 1)).double()


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)


def build(algo: str, model: torch.nn.Module, comm: Comm, **kw: Any) -> Any:
    inner = torch.optim.SGD(model.parameters(), lr=kw.pop("lr", 0.2))
    return ALGORITHMS[algo](model, inner, comm=comm, **kw)


def batch_indices(rank: int, world_size: int, step: int, batch: int = 16) -> torch.Tensor:
    """Rank ``rank``'s batch at ``step``: a disjoint slice of a seeded permutation."""
    g = torch.Generator().manual_seed(step)
    perm = torch.randperm(SYNTH_N, generator=g)
    return perm[rank * batch : (rank + 1) * batch]


HPARAMS: dict[str, dict[str, Any]] = {
    "sync": {},
    "local": {"tau": 2},
    "overlap": {"tau": 2, "alpha": 0.6},
    "overlap_momentum": {"tau": 2, "alpha": 0.6, "anchor_momentum": 0.5},
    "easgd": {"tau": 2, "alpha": 0.2},
    "cocod": {"tau": 2},
}


def _make(name: str, comm: Comm) -> tuple[torch.nn.Module, Any]:
    model = make_model(seed=comm.rank)  # different on each rank: the wrapper must broadcast
    algo = name.split("_")[0]
    return model, build(algo, model, comm, **HPARAMS[name])


def _flat(model: torch.nn.Module) -> torch.Tensor:
    tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def conformance(rank: int, world_size: int, payload: Any) -> dict[str, Any]:
    """Every algorithm: loss before/after, models after an average, a state_dict round trip."""
    comm = Comm()
    x, y = synthetic_data()
    out: dict[str, Any] = {}
    steps, save_at = payload["steps"], payload["save_at"]
    for name in HPARAMS:
        model, opt = _make(name, comm)
        start = _flat(model)
        before = float(loss_of(model, x, y).detach())
        saved = None
        after_round = None
        for step in range(steps):
            if step == save_at:
                buf = io.BytesIO()
                torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
                saved = buf.getvalue()
            idx = batch_indices(rank, world_size, step)
            loss_of(model, x[idx], y[idx]).backward()
            opt.step()
            opt.zero_grad()
            if name in ("sync", "local") and (step + 1) % opt.tau == 0:
                after_round = _flat(model)
        continued = _flat(model)
        # Reload the mid-run state into a fresh model and wrapper; run the same steps again.
        assert saved is not None
        state = torch.load(io.BytesIO(saved), weights_only=True)
        model2, opt2 = _make(name, comm)
        model2.load_state_dict(state["model"])
        opt2.load_state_dict(state["opt"])
        for step in range(save_at, steps):
            idx = batch_indices(rank, world_size, step)
            loss_of(model2, x[idx], y[idx]).backward()
            opt2.step()
            opt2.zero_grad()
        reloaded = _flat(model2)
        opt.synchronize()
        out[name] = {
            "start": start, "before": before, "after": float(loss_of(model, x, y).detach()),
            "after_round": after_round, "continued": continued, "reloaded": reloaded,
            "synchronized": _flat(model),
            "anchor": _anchor(opt),
        }
    return out


def _anchor(opt: Any) -> torch.Tensor | None:
    """Overlap's anchor or EASGD's center: the variables every rank must agree on."""
    tensors = getattr(opt, "anchor", None) or getattr(opt, "center", None)
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else None


def sync_trajectory(rank: int, world_size: int, payload: Any) -> torch.Tensor:
    """SyncSGD with plain SGD; the test compares with one process on the union of batches."""
    comm = Comm()
    x, y = synthetic_data()
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1).double()
    opt = build("sync", model, comm, lr=0.3)
    for step in range(payload["steps"]):
        idx = batch_indices(rank, world_size, step)
        loss_of(model, x[idx], y[idx]).backward()
        opt.step()
        opt.zero_grad()
    return _flat(model)


def hidden(rank: int, world_size: int, payload: Any) -> dict[str, dict[str, float]]:
    """Sleep-modelled compute under an injected latency: how much communication is hidden."""
    comm = Comm(Injection(latency_ms=payload["latency_ms"]))
    out = {}
    for name in ("overlap", "local", "cocod"):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 1).double()
        opt = build(name, model, comm, tau=payload["tau"])
        opt.start_clock()
        for _ in range(payload["steps"]):
            time.sleep(payload["compute_ms"] / 1e3)  # the step's "computation"
            model.weight.grad = torch.ones_like(model.weight)
            model.bias.grad = torch.ones_like(model.bias)
            opt.step()
        out[name] = opt.summary()
    return out


def gather_blocks(rank: int, world_size: int, payload: Any) -> dict[str, torch.Tensor]:
    comm = Comm()
    owners = {f"b{i}": i % world_size for i in range(5)}
    blocks = {k: torch.full((i + 1,), float(rank * 10 + i)) for i, k in enumerate(owners)}
    return comm.all_gather_blocks(blocks, owners)


def echo(rank: int, world_size: int, payload: Any) -> dict[str, Any]:
    return {"rank": rank, "world_size": world_size, "payload": payload,
            "env": os.environ.get("SGDLAB_TEST_ENV"), "wrapped": os.environ.get("SGDLAB_WRAPPED"),
            "threads": torch.get_num_threads()}


def fail_on_rank_1(rank: int, world_size: int, payload: Any) -> None:
    if rank == 1:
        raise RuntimeError("rank one broke on purpose")
    torch.distributed.barrier()  # rank 0 waits for a peer that is gone


def hang_on_rank_1(rank: int, world_size: int, payload: Any) -> None:
    if rank == 1:
        time.sleep(3600)


def w2_suite(rank: int, world_size: int, payload: Any) -> dict[str, Any]:
    """Every two-rank program in one launch (start-up is the expensive part of a test)."""
    return {
        "conformance": conformance(rank, world_size, payload["conformance"]),
        "sync_trajectory": sync_trajectory(rank, world_size, payload["sync_trajectory"]),
        "hidden": hidden(rank, world_size, payload["hidden"]),
        "gather_blocks": gather_blocks(rank, world_size, None),
    }
