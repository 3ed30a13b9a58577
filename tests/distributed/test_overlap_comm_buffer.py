"""The averages of the rounds reuse one flat buffer (issue S2: Overlap's CPU cost of
communication): no new buffer, and its page faults, per collective; the trajectories are those
of a fresh buffer per collective, bit for bit. One process, no process group (rank 0 of 1),
where the copy into the buffer and the division still run."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sgdlab.distributed import ALGORITHMS, Comm
from sgdlab.distributed.flat import flat_buffer

KW: dict[str, dict[str, Any]] = {"sync": {}, "local": {"tau": 2}, "easgd": {"tau": 2},
                                 "overlap": {"tau": 2, "anchor_momentum": 0.7},
                                 "cocod": {"tau": 2}, "torch-local": {"tau": 2}}


class RecordingComm(Comm):
    """Records the ``out`` of every average; ``fresh`` drops it (a new buffer each time)."""

    def __init__(self, fresh: bool = False) -> None:
        super().__init__()
        self.fresh, self.outs = fresh, []

    def average(self, tensors: Any, inject: bool = True, out: torch.Tensor | None = None) -> Any:
        self.outs.append(out)
        return super().average(tensors, inject, None if self.fresh else out)


def _train(name: str, comm: Comm) -> tuple[torch.Tensor, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5),
                                torch.nn.Linear(5, 1)).double()
    opt = ALGORITHMS[name](model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                           comm=comm, **KW[name])
    g = torch.Generator().manual_seed(1)
    for _ in range(7):
        model(torch.randn(8, 4, generator=g, dtype=torch.float64)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    flat = torch.cat([t.detach().reshape(-1) for t in model.state_dict().values()
                      if t.is_floating_point()])
    return flat, opt


@pytest.mark.parametrize("name", sorted(KW))
def test_rounds_reuse_one_buffer_and_match_fresh_buffers(name: str) -> None:
    reused, fresh = RecordingComm(), RecordingComm(fresh=True)
    a, opt = _train(name, reused)
    b, _ = _train(name, fresh)
    assert torch.equal(a, b)
    outs = [o for o in reused.outs if o is not None]
    if name == "torch-local":  # torch's averager, not ours, averages (and only with a group)
        assert not outs
        return
    assert len(outs) == len(opt.rounds) and outs  # every round's average had a buffer
    assert len({o.data_ptr() for o in outs}) == 1  # the same one


def test_average_into_a_buffer_copies_and_checks_its_size() -> None:
    x, y = torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])
    buf = flat_buffer([x, y])
    means = Comm().average([x, y], out=buf).wait()
    x.add_(1.0)  # the average holds a copy
    assert torch.equal(means[0], torch.tensor([1.0, 2.0])) and means[1].shape == (1, 1)
    assert means[0].data_ptr() == buf.data_ptr()
    lone = Comm().average([x]).wait()[0]  # one tensor: still a copy, not a view of it
    x.add_(1.0)
    assert torch.equal(lone, torch.tensor([2.0, 3.0]))
    with pytest.raises(ValueError, match="Invalid out"):
        Comm().average([x, y], out=torch.empty(4))
