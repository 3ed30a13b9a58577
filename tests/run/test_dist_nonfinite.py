"""A distributed run that diverges stops at once, naming the rank, the step and the last good
checkpoint, and never writes a checkpoint from non-finite values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sgdlab.checkpoint import load_checkpoint
from sgdlab.distributed.checkpoints import steps_on_disk
from sgdlab.distributed.launch import RankFailure
from sgdlab.errors import DivergenceError
from sgdlab.run.config import DistConfig
from sgdlab.run.dist import run_dist
from sgdlab.run.rank import rank_entry

MESSAGE = re.compile(
    r"training diverged on rank (\d) at step (\d+) \(((?:the loss is|.+ has) (?:nan|inf))\); "
    r"(the last good checkpoint is (\S+) \(step (\d+)\)|no checkpoint was written)"
)


def exploding(root: Path, lr: float, world_size: int = 1) -> DistConfig:
    return DistConfig(algo="sync", world_size=world_size, workload="logreg-breast-cancer",
                      lr=lr, batch_size=8, steps=400, checkpoint_every=5, checkpoint_dir=str(root))


def _tensors(tree: object) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree] if tree.is_floating_point() else []
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else []
    return [t for v in values for t in _tensors(v)]


def _check_stop(message: str, root: Path) -> None:
    match = MESSAGE.search(message)
    assert match, message
    step = int(match.group(2))
    cuts = steps_on_disk(root, 0)
    assert all(s < step for s in cuts), "a checkpoint was written at or after the divergence"
    if match.group(5):
        last = int(match.group(6))
        assert Path(match.group(5)).name == f"step-{last:08d}" and last == max(cuts)
        state = load_checkpoint(Path(match.group(5)) / "rank-0.pt")
        for tensor in [*state["model"].values(), *_tensors(state["optimizer"])]:
            assert bool(torch.isfinite(tensor).all())
    else:
        assert cuts == []


@pytest.mark.parametrize("lr", [1e3, 1e5, 1e8])
def test_one_rank_stops_naming_the_step_and_the_last_good_checkpoint(
    tmp_path: Path, lr: float
) -> None:
    with pytest.raises(DivergenceError) as info:
        rank_entry(0, 1, exploding(tmp_path, lr))
    _check_stop(str(info.value), tmp_path)
    assert not (tmp_path / "model.pt").exists()


def test_a_poisoned_state_is_never_checkpointed(tmp_path: Path) -> None:
    from sgdlab.distributed.checkpoints import CutStore
    from sgdlab.distributed.comm import Comm
    from sgdlab.distributed.sync_sgd import SyncSGD
    from sgdlab.run.rank import RankRun

    model = torch.nn.Linear(3, 1)
    opt = SyncSGD(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    config = exploding(tmp_path, 0.1)
    run = RankRun(0, config, workload=None)  # type: ignore[arg-type]  # checkpoints only
    run.model, run.opt, run.comm = model, opt, Comm()
    run.cuts = CutStore(tmp_path, Comm(), "k")
    run.checkpoint(5)
    with torch.no_grad():
        model.bias.fill_(float("inf"))
    with pytest.raises(DivergenceError, match=r"at step 10 \(parameter 'bias' has inf\); "
                                              r"the last good checkpoint is .*step-00000005"):
        run.checkpoint(10)
    assert steps_on_disk(tmp_path, 0) == [5]


@pytest.mark.slow
def test_two_ranks_stop_with_the_diverged_ranks_line(tmp_path: Path) -> None:
    with pytest.raises(RankFailure) as info:
        run_dist(exploding(tmp_path, 1e5, world_size=2), timeout_s=120)
    assert "\n" not in str(info.value)
    _check_stop(str(info.value), tmp_path)


class _SqrtModel(torch.nn.Module):
    """sqrt(a * x0) at x0 = 0: the loss is finite, its gradient in ``a`` is 0/0."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.a = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + torch.sqrt(self.a * x[:, :1])


def test_a_nan_gradient_under_a_finite_loss_stops_before_the_step(tmp_path: Path) -> None:
    from sgdlab.run.rank import RankRun
    from sgdlab.workloads import Workload

    x = torch.rand(64, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    x[:, 0] = 0.0
    y = (x.sum(1) > 2).long()
    workload = Workload("sqrt-toy", x, y, x[:16].clone(), y[:16].clone(), 2, _SqrtModel)
    config = DistConfig(algo="sync", world_size=1, workload="sqrt-toy", lr=0.1, batch_size=8,
                        steps=10, checkpoint_dir=str(tmp_path), checkpoint_every=5)
    with pytest.raises(DivergenceError, match=r"at step 1 \(the gradient of parameter 'a' has "
                                              r"nan\); no checkpoint was written"):
        RankRun(0, config, workload).run()
    assert steps_on_disk(tmp_path, 0) == []
