from __future__ import annotations

import pytest
import torch

from sgdlab.optim import DiminishingLR


def _opt() -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=123.0)


def test_follows_alpha_over_mu_t_plus_e() -> None:
    opt = _opt()
    sched = DiminishingLR(opt, mu=0.5, L=4.0, alpha=3.0)
    E = 2 * 3.0 * 4.0 / 0.5
    assert sched.E == pytest.approx(E)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([3.0 / (0.5 * (t + E)) for t in range(5)])
    assert seen[0] <= 1 / (2 * 4.0) + 1e-15


def test_explicit_e_and_state_dict_round_trip() -> None:
    opt = _opt()
    sched = DiminishingLR(opt, mu=1.0, L=1.0, alpha=2.0, E=10.0)
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = _opt()
    sched2 = DiminishingLR(opt2, mu=1.0, L=1.0, alpha=2.0, E=10.0)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(2.0 / 14.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mu": -1.0, "L": 1.0}, r"Invalid mu: -1.0"),
        ({"mu": 0.0, "L": 1.0}, r"Invalid mu: 0.0"),
        ({"mu": 1.0, "L": float("nan")}, r"Invalid L: nan"),
        ({"mu": 2.0, "L": 1.0}, r"Invalid mu, L: mu=2.0 exceeds L=1.0"),
        ({"mu": 1.0, "L": 1.0, "alpha": 1.0}, r"Invalid alpha: 1.0 .*alpha > 1"),
        (
            {"mu": 1.0, "L": 1.0, "alpha": 2.0, "E": 3.0},
            r"Invalid E: 3.0 .*E >= 2\*alpha\*L/mu = 4",
        ),
    ],
)
def test_invalid_constants_raise(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiminishingLR(_opt(), **kwargs)
