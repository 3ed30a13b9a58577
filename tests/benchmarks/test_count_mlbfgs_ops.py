"""The operation count of mL-BFGS's step (benchmarks/count_mlbfgs_ops.py): it tells a step
between pair steps from a pair step, and refuses a period with no step between pair steps."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def script(load_script: Callable[[str], ModuleType]) -> ModuleType:
    return load_script("count_mlbfgs_ops")


def test_a_pair_step_dispatches_more_than_a_step(script: ModuleType) -> None:
    out = script.count_ops("logreg-fmnist", history=2, period=3)
    step, pair = out["step"], out["pair_step"]
    assert 0 < step["total"] < pair["total"]
    assert step["by_op"].get("aten::dot", 0) == 0 < pair["by_op"]["aten::dot"]  # damping
    assert out["per_step_average"] == pytest.approx((2 * step["total"] + pair["total"]) / 3)


def test_a_period_below_two_is_refused(script: ModuleType) -> None:
    with pytest.raises(ValueError, match="Invalid history/period: 2, 1"):
        script.count_ops("logreg-fmnist", history=2, period=1)
