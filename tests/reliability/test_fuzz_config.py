"""Generated bad configuration values: TrainConfig, DistConfig, Hogwild!'s config and step
size, and the inputs of the theory functions.

Each case starts from a valid configuration and breaks one value (NaN, inf, negative, zero
where it must be positive, out of range, an unknown choice, the wrong type). Validation must
raise ``ValueError`` (``ConfigError``) in one line: no ``TypeError`` from a comparison, no
silent acceptance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from fuzz_helpers import assert_one_line, fuzz
from hypothesis import given
from hypothesis import strategies as st

from sgdlab.parallel.hogwild import HogwildConfig, StepSize
from sgdlab.run.config import DistConfig, TrainConfig
from sgdlab.theory import biased_sgd as bs
from sgdlab.theory import sgd_bounds as sb

NAN, INF = math.nan, math.inf
WRONG = ["abc", "", [1.0], {"a": 1}, (1, 2)]  # not bytes: float(b"1") is 1.0
NOT_FINITE = [NAN, INF, -INF]
NEGATIVE = [-1, -1.0, -1e-300, -(10**9)]
POSITIVE_BAD = [*NOT_FINITE, *NEGATIVE, 0, 0.0, *WRONG, None, True]
NONNEG_BAD = [*NOT_FINITE, *NEGATIVE, *WRONG, None, True]
COUNT_BAD = [0, -1, 1.5, "3", None, True, NAN, *NEGATIVE]  # an integer >= 1
INDEX_BAD = [-1, 1.5, "3", None, True, NAN, -(10**9)]  # an integer >= 0
CHOICE_BAD = ["nope", "", "CONSTANT", None, 1, [1]]
# Which key of a generated case holds the bad value (cases are plain dicts, keyed by id).
BAD_KEYS: dict[int, tuple[str, ...]] = {}


def one_bad(
    valid: dict[str, Any], bad: dict[str, list[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """``valid`` with one key replaced by one of its bad values."""
    def build(k: str, v: Any) -> dict[str, Any]:
        case = {**valid, k: v}
        BAD_KEYS[id(case)] = (k,)
        return case

    def values(k: str) -> st.SearchStrategy[Any]:
        listed = st.sampled_from(bad[k])
        if any(_numeric(v) and v < 0 for v in bad[k]):  # then any negative number is bad too
            return st.one_of(listed, st.floats(max_value=-1e-300, allow_nan=False),
                             st.integers(max_value=-1))
        return listed

    return st.sampled_from(sorted(bad)).flatmap(lambda k: values(k).map(lambda v: build(k, v)))


def _numeric(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def expect_value_error(build: Callable[[], Any], case: dict[str, Any]) -> None:
    """A bad number must raise ValueError; a value of the wrong type (a string, None, a list,
    a bool where a number goes) ValueError or TypeError, as Python's own functions do; either
    in one line, and never silent acceptance."""
    wrong_type = any(not _numeric(v) for k, v in case.items() if k in BAD_KEYS.get(id(case), ()))
    try:
        build()
    except ValueError as exc:
        assert_one_line(exc)
        return
    except TypeError as exc:
        if not wrong_type:
            raise
        assert_one_line(exc)
        return
    except Exception as exc:  # noqa: BLE001 - the point: anything but a ValueError is a bug
        pytest.fail(f"{case}: {type(exc).__name__}: {exc} (want one ValueError line)")
    pytest.fail(f"{case}: accepted")


# --- TrainConfig -----------------------------------------------------------------------------

TRAIN_VALID: dict[str, Any] = {"workload": "logreg-breast-cancer", "steps": 10, "batch_size": 8}
TRAIN_BAD: dict[str, list[Any]] = {
    "steps": COUNT_BAD,
    "batch_size": COUNT_BAD,
    "seed": INDEX_BAD,
    "eval_every": INDEX_BAD,
    "log_every": INDEX_BAD,
    "checkpoint_every": INDEX_BAD,
    "threads": INDEX_BAD,
    "lr": NONNEG_BAD,
    "schedule": CHOICE_BAD,
    "mu": [1.0, 0.5],  # with the constant schedule
    "L": [2.0],
    "device": ["gpu", "", "tpu", None, 1],
    "optimizer_options": [{"lr": 0.1}],
}  # alpha of the diminishing schedule: DiminishingLR checks it (the CLI target covers it)


@fuzz(ci=60)
@given(one_bad(TRAIN_VALID, TRAIN_BAD))
def test_train_config(case: dict[str, Any]) -> None:
    expect_value_error(lambda: TrainConfig(**case).validate(), case)


# --- DistConfig ------------------------------------------------------------------------------

DIST_VALID: dict[str, Any] = {"algo": "local", "workload": "logreg-breast-cancer", "steps": 4}
DIST_BAD: dict[str, list[Any]] = {
    "algo": CHOICE_BAD,
    "world_size": COUNT_BAD,
    "batch_size": COUNT_BAD,
    "tau": COUNT_BAD,
    "steps": COUNT_BAD,
    "seed": INDEX_BAD,
    "eval_every": INDEX_BAD,
    "eval_samples": INDEX_BAD,
    "lr": NONNEG_BAD,
    "alpha": [*NOT_FINITE, -0.5, 1.5, *WRONG, None],
    "anchor_momentum": [*NOT_FINITE, -0.5, 1.0, 2.0, *WRONG, None],
    "partition": ["dirichlet", "dirichlet:-1", "dirichlet:nan", "iid:1", ""],
    "bandwidth_mbps": NONNEG_BAD,
    "link_steps": NONNEG_BAD,
    "latency_ms": NONNEG_BAD,
    "straggler_prob": [*NOT_FINITE, -0.1, 1.5, *WRONG, None],
    "straggler_slowdown": [*NOT_FINITE, 0.5, 0, -1, *WRONG, None],
    "optimizer_options": [{"lr": 0.1}],
}


# DistConfig's float knobs take a bool as a number (bandwidth_mbps=True is 1.0): left out.
DIST_BAD = {k: [v for v in vs if not isinstance(v, bool)] for k, vs in DIST_BAD.items()}


@fuzz(ci=60)
@given(one_bad(DIST_VALID, DIST_BAD))
def test_dist_config(case: dict[str, Any]) -> None:
    expect_value_error(lambda: DistConfig(**case).validate(), case)


# --- Hogwild! --------------------------------------------------------------------------------

HOG_VALID: dict[str, Any] = {"workers": 2, "steps": 10, "step_size": StepSize.constant(0.1)}
HOG_BAD: dict[str, list[Any]] = {
    "workers": COUNT_BAD,
    "steps": [*COUNT_BAD, 1],  # fewer than workers
    "batch_size": COUNT_BAD,
    "seed": INDEX_BAD,
    "log_points": COUNT_BAD,
    "timeout_s": [0, -1, NAN, -INF, "abc"],
    "device": ["gpu", "", None, 1],
    "step_size": [0.1, None, "constant"],
}


@fuzz(ci=40)
@given(one_bad(HOG_VALID, HOG_BAD))
def test_hogwild_config(case: dict[str, Any]) -> None:
    expect_value_error(lambda: HogwildConfig(**case), case)


STEP_VALID: dict[str, Any] = {"mu": 0.1, "L": 1.0, "alpha": 2.0}
STEP_BAD: dict[str, list[Any]] = {
    "mu": [*POSITIVE_BAD, 5.0],  # mu > L
    "L": [*POSITIVE_BAD, 0.01],
    "alpha": [*POSITIVE_BAD, 1.0, 0.5],
    "E": [*POSITIVE_BAD[:-2], 1e-6],  # None is valid (the smallest E)
}
# DiminishingLR takes a bool as a number (L=True is 1.0): left out.
STEP_BAD = {k: [v for v in vs if not isinstance(v, bool)] for k, vs in STEP_BAD.items()}


@fuzz(ci=40)
@given(st.one_of(
    one_bad({"lr": 0.1}, {"lr": POSITIVE_BAD}),
    one_bad(STEP_VALID, STEP_BAD),
))
def test_hogwild_step_size(case: dict[str, Any]) -> None:
    if "lr" in case:
        expect_value_error(lambda: StepSize.constant(case["lr"]), case)
    else:
        expect_value_error(lambda: StepSize.diminishing(**case), case)


# --- theory ----------------------------------------------------------------------------------

# The theory functions take a bool or bytes where a number goes (alpha=True is 1.0): left out.
POSITIVE_BAD_T = [v for v in POSITIVE_BAD if not isinstance(v, bool | bytes)]
NONNEG_BAD_T = [v for v in NONNEG_BAD if not isinstance(v, bool | bytes)]
PROBLEM = {"mu": 0.5, "L": 2.0}
START = {"N": 1.0, "w0_dist2": 4.0}
PROBLEM_BAD: dict[str, list[Any]] = {
    "mu": [*POSITIVE_BAD_T, 5.0], "L": [*POSITIVE_BAD_T, 0.1], "D": COUNT_BAD,
}
START_BAD: dict[str, list[Any]] = {"N": NONNEG_BAD_T, "w0_dist2": NONNEG_BAD_T}
ALPHA_BAD = [*POSITIVE_BAD_T, 1.0, 0.5]
E_BAD = [*POSITIVE_BAD_T[:-2], 1e-3]
ETA_BAD = [*POSITIVE_BAD_T, 1.0]  # > 1/(2 L D)

SGD_BOUNDS: dict[str, tuple[Callable[..., Any], dict[str, Any], dict[str, list[Any]]]] = {
    "min_shift": (sb.min_shift, {**PROBLEM, "alpha": 2.0},
                  {**PROBLEM_BAD, "alpha": ALPHA_BAD}),
    "max_constant_step": (sb.max_constant_step, {"L": 2.0},
                          {"L": POSITIVE_BAD_T, "D": COUNT_BAD}),
    "diminishing_step_sizes": (sb.diminishing_step_sizes, {**PROBLEM, "steps": 5},
                               {**PROBLEM_BAD, "steps": INDEX_BAD, "alpha": ALPHA_BAD,
                                "E": E_BAD}),
    "diminishing_bound": (sb.diminishing_bound, {**PROBLEM, **START, "steps": 5},
                          {**PROBLEM_BAD, **START_BAD, "steps": INDEX_BAD, "alpha": ALPHA_BAD,
                           "E": E_BAD}),
    "diminishing_recursion": (sb.diminishing_recursion, {**PROBLEM, **START, "steps": 5},
                              {**PROBLEM_BAD, **START_BAD, "steps": INDEX_BAD,
                               "alpha": ALPHA_BAD, "E": E_BAD}),
    "constant_bound": (sb.constant_bound, {**PROBLEM, **START, "steps": 5, "eta": 0.1},
                       {**PROBLEM_BAD, **START_BAD, "steps": INDEX_BAD, "eta": ETA_BAD}),
    "constant_recursion": (sb.constant_recursion, {**PROBLEM, **START, "steps": 5, "eta": 0.1},
                           {**PROBLEM_BAD, **START_BAD, "steps": INDEX_BAD, "eta": ETA_BAD}),
    "recursion_bound": (sb.recursion_bound, {**PROBLEM, **START, "etas": [0.1, 0.1]},
                        {**PROBLEM_BAD, **START_BAD,
                         "etas": [[NAN], [-0.1], [[0.1]], "abc", None, [0.1, INF], [10.0]]}),
    "gradient_second_moment_bound": (sb.gradient_second_moment_bound,
                                     {"gap": 1.0, "L": 2.0, "N": 1.0},
                                     {"gap": [g for g in NONNEG_BAD_T
                                              if not isinstance(g, list | tuple)],
                                      "L": POSITIVE_BAD_T, "N": NONNEG_BAD_T}),
    "noise_constant": (sb.noise_constant, {"grads_at_opt": [[1.0, 0.0], [0.0, 1.0]]},
                       {"grads_at_opt": [[[NAN, 0.0]], [1.0, 2.0], "abc", None, [[INF]], []],
                        "weights": [[NAN, 1.0], [-1.0, 2.0], [1.0], "abc", [0.0, 0.0]]}),
}


@st.composite
def theory_case(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(SGD_BOUNDS)))
    _, valid, bad = SGD_BOUNDS[name]
    return name, draw(one_bad(valid, bad))


@fuzz(ci=80)
@given(theory_case())
def test_sgd_bound_inputs(case: tuple[str, dict[str, Any]]) -> None:
    name, kwargs = case
    fn = SGD_BOUNDS[name][0]
    expect_value_error(lambda: fn(**kwargs), kwargs)


SETTING_VALID: dict[str, Any] = {"case": "smooth", "m": 1.0, "L": 2.0}
SETTING_BAD: dict[str, list[Any]] = {
    "case": CHOICE_BAD,
    "m": [*POSITIVE_BAD_T, 5.0],
    "L": [*POSITIVE_BAD_T, 0.5],
    "delta": NONNEG_BAD_T,
    "c": NONNEG_BAD_T,
    "sigma2": NONNEG_BAD_T,
    "beta": [1.0, -1.0, NAN],  # only for case 'bounded'
    "K": [1.0, NAN],
}
BOUNDED_BAD: dict[str, list[Any]] = {
    "beta": [*POSITIVE_BAD_T[:-2], 0.5],  # beta < m
    "K": [*NONNEG_BAD_T[:-2], 0.0],  # K < sigma2
}


@fuzz(ci=50)
@given(st.one_of(
    one_bad(SETTING_VALID, SETTING_BAD),
    one_bad({"case": "bounded", "m": 1.0, "L": 2.0, "sigma2": 0.5, "beta": 2.0, "K": 1.0},
            BOUNDED_BAD),
))
def test_biased_sgd_setting(case: dict[str, Any]) -> None:
    expect_value_error(lambda: bs.BiasedSGDSetting(**case), case)


GOOD_SETTING = bs.BiasedSGDSetting(case="smooth", m=1.0, L=2.0, delta=0.1, c=0.01)
CALLS: dict[str, tuple[Callable[..., Any], dict[str, Any], dict[str, list[Any]]]] = {
    "one_step_bound": (lambda **k: bs.one_step_bound(GOOD_SETTING, **k), {"alpha": 0.1},
                       {"alpha": POSITIVE_BAD_T, "U": [*NONNEG_BAD_T[:-2]],
                        "rho2_max": [NAN, -1.0, "abc"], "solver": CHOICE_BAD}),
    "one_step_closed_form": (lambda **k: bs.one_step_closed_form(GOOD_SETTING, **k),
                             {"alpha": 0.1}, {"alpha": POSITIVE_BAD_T, "U": NONNEG_BAD_T[:-2]}),
    "worst_case_value": (lambda **k: bs.worst_case_value(GOOD_SETTING, **k),
                         {"alpha": 0.1, "U": 1.0},
                         {"alpha": POSITIVE_BAD_T, "U": NONNEG_BAD_T}),
    "sequential_schedule": (lambda **k: bs.sequential_schedule(GOOD_SETTING, **k),
                            {"U0": 1.0, "steps": 3},
                            {"U0": NONNEG_BAD_T, "steps": INDEX_BAD,
                             "method": CHOICE_BAD, "solver": CHOICE_BAD}),
}


@st.composite
def biased_call(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(CALLS)))
    _, valid, bad = CALLS[name]
    return name, draw(one_bad(valid, bad))


@fuzz(ci=40)
@given(biased_call())
def test_biased_sgd_inputs(case: tuple[str, dict[str, Any]]) -> None:
    name, kwargs = case
    fn = CALLS[name][0]
    expect_value_error(lambda: fn(**kwargs), kwargs)
