from __future__ import annotations

import pytest
import torch

from sgdlab.errors import ConfigError
from sgdlab.optim import load_optimizer, optimizer_names, register_optimizer
from sgdlab.optim.registry import peers_available


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3))]


def test_torch_optimizers_are_registered() -> None:
    assert {"sgd", "adam", "adamw", "lbfgs"} <= set(optimizer_names())
    opt = load_optimizer("SGD", _params(), lr=0.3, momentum=0.5)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.5


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown optimizer 'nope'; choose one of .*adam"):
        load_optimizer("nope", _params(), lr=0.1)


def test_unknown_hyperparameter_names_what_is_accepted() -> None:
    with pytest.raises(
        ConfigError, match=r"'adam' takes no hyperparameter momentum; it accepts lr"
    ):
        load_optimizer("adam", _params(), lr=0.1, momentum=0.9)


def test_bad_value_raises_the_optimizers_own_error() -> None:
    with pytest.raises(ValueError, match=r"Invalid learning rate: -1"):
        load_optimizer("sgd", _params(), lr=-1.0)


def test_names_are_unique_and_lower_case() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_optimizer("sgd", torch.optim.SGD, "again")
    with pytest.raises(ValueError, match="Invalid optimizer name"):
        register_optimizer("Mixed", torch.optim.SGD, "x")


@pytest.mark.skipif(not peers_available(), reason="the optional peers extra is not installed")
def test_peer_optimizers_load_by_prefix() -> None:
    opt = load_optimizer("peer:lion", _params(), lr=1e-3)
    assert type(opt).__name__ == "Lion"
    with pytest.raises(ConfigError, match=r"unknown optimizer 'peer:not-a-thing'"):
        load_optimizer("peer:not-a-thing", _params())
