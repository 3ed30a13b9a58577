"""Generated bad optimizer hyperparameters, for every optimizer in the registry.

Each case sets one knob of one optimizer to a value outside its domain (negative, NaN, inf,
out of range, the wrong type) or passes an unknown keyword. It must raise a ``ValueError``
(``ConfigError`` is one) at construction, in one line that names the knob: never silent
acceptance, never a crash later inside ``step``. Through the CLI the same input exits 2 with
one ``error:`` line and creates nothing.

The domains below are the specification; the optimizer list and each optimizer's knobs come
from the registry, so a newly registered optimizer is covered by the knobs it shares.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fuzz_helpers import assert_one_error_line, assert_one_line, chdir, fuzz, run_cli
from hypothesis import given
from hypothesis import strategies as st

from sgdlab.optim import load_optimizer, optimizer_names
from sgdlab.optim.registry import accepted_hparams, get_spec

# Every optimizer of the registry, and one of the dynamic prox:<inner> names.
NAMES = [*optimizer_names(), "prox:adamw"]


def _real(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)


def _in(lo: float, hi: float, hi_open: bool = True) -> Callable[[Any], bool]:
    return lambda v: _real(v) and lo <= v and (v < hi if hi_open else v <= hi)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _betas(v: Any) -> bool:
    return isinstance(v, tuple | list) and len(v) == 2 and all(_in(0, 1)(b) for b in v)


NONNEG = _in(0.0, math.inf)
UNIT = _in(0.0, 1.0)
# The valid domain of each knob; a generated value outside it must be refused.
DOMAINS: dict[str, Callable[[Any], bool]] = {
    "lr": NONNEG,
    "momentum": UNIT,
    "dampening": _in(0.0, 1.0, hi_open=False),
    "weight_decay": NONNEG,
    "eps": NONNEG,
    "betas": _betas,
    "beta_param": UNIT,
    "beta_grad": UNIT,
    "pair_momentum": UNIT,
    "history_size": _count,
    "update_freq": _count,
    "max_iter": _count,
    "max_eval": lambda v: v is None or _count(v),
    "tolerance_grad": NONNEG,
    "tolerance_change": NONNEG,
    "line_search_fn": lambda v: v is None or v == "strong_wolfe",
    "max_norm": lambda v: v is None or (_real(v) and v > 0),
    "lam": NONNEG,
    "window": _count,
}
# How a message may name a knob (torch says "learning rate", "beta parameter", "epsilon").
ALIASES = {"lr": ("lr", "learning rate"), "betas": ("betas", "beta"), "eps": ("eps", "epsilon")}

WRONG_TYPES = st.one_of(
    st.sampled_from(["abc", "", "0.1x", None, True, False, [0.1], {"a": 1}, b"x", (0.5,)]),
    st.text(max_size=6),
)
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**9), 10**9),
    st.sampled_from([-1.0, -1e-12, 1.0, 1.5, 0.0, -0.0, math.nan, math.inf, -math.inf]),
)
PAIRS = st.one_of(
    st.tuples(NUMBERS, NUMBERS),
    st.lists(NUMBERS, max_size=4).map(tuple),
    st.tuples(st.just(0.9), WRONG_TYPES),
)


def bad_value(knob: str) -> st.SearchStrategy[Any]:
    base = st.one_of(NUMBERS, WRONG_TYPES, PAIRS) if knob == "betas" else st.one_of(
        NUMBERS, WRONG_TYPES
    )
    return base.filter(lambda v: not DOMAINS[knob](v))


def bool_knobs(name: str) -> list[str]:
    """Knobs whose default is a bool (or None, as torch's foreach/fused)."""
    p = torch.nn.Parameter(torch.zeros(2))
    defaults = load_optimizer(name, [p], lr=0.1).defaults
    return sorted(
        k for k, v in defaults.items() if isinstance(v, bool) or k in ("foreach", "fused")
    )


def knobs(name: str) -> list[str]:
    """The checked knobs ``name`` takes: its signature's, or its defaults' for a wrapper."""
    accepted = accepted_hparams(get_spec(name))
    if accepted is None:  # a proximal wrapper: the inner optimizer's knobs, lam and window
        p = torch.nn.Parameter(torch.zeros(2))
        accepted = [*load_optimizer(name, [p], lr=0.1).defaults, "lam", "window"]
    return sorted(set(accepted) & set(DOMAINS))


KNOBS = {name: knobs(name) for name in NAMES}
BOOL_KNOBS = {name: bool_knobs(name) for name in NAMES}


@st.composite
def bad_hparam(draw: st.DrawFn) -> tuple[str, str, Any]:
    """(optimizer, knob, value) with exactly one knob outside its domain."""
    name = draw(st.sampled_from(NAMES))
    kind = draw(st.sampled_from(["numeric", "numeric", "numeric", "bool", "unknown"]))
    if kind == "bool" and BOOL_KNOBS[name]:
        knob = draw(st.sampled_from(BOOL_KNOBS[name]))
        allow_none = knob in ("foreach", "fused")
        value = draw(
            st.one_of(WRONG_TYPES, NUMBERS).filter(
                lambda v: not isinstance(v, bool) and not (allow_none and v is None)
            )
        )
        return name, knob, value
    if kind == "unknown":
        knob = draw(
            st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True).filter(
                lambda k: k not in KNOBS[name] and k not in BOOL_KNOBS[name] and k not in
                (accepted_hparams(get_spec(name)) or [*DOMAINS, "inner_decay", "coupled",
                                                       "lam_schedule", "foreach", "lam",
                                                       "epoch_steps",
                                                       "window", "blocks", "exchange",
                                                       "damping", "nesterov"])
            )
        )
        return name, knob, draw(st.one_of(NUMBERS, WRONG_TYPES))
    knob = draw(st.sampled_from(KNOBS[name]))
    return name, knob, draw(bad_value(knob))


def _build(name: str, knob: str, value: Any) -> torch.optim.Optimizer:
    p = torch.nn.Parameter(torch.ones(3))
    hparams = {"lr": 0.1, knob: value}
    return load_optimizer(name, [p], **hparams)


def _names_knob(message: str, knob: str) -> bool:
    return any(alias in message.lower() for alias in ALIASES.get(knob, (knob,)))


def test_every_registered_optimizer_has_checked_knobs() -> None:
    for name in NAMES:
        assert "lr" in KNOBS[name], name


@fuzz(ci=150)
@given(case=bad_hparam())
def test_bad_hyperparameter_raises_one_value_error_line(case: tuple[str, str, Any]) -> None:
    name, knob, value = case
    with pytest.raises(ValueError) as info:
        _build(name, knob, value)
    message = assert_one_line(info.value)
    assert _names_knob(message, knob), f"{name} {knob}={value!r}: message {message!r}"


def _set_arg(knob: str, value: Any) -> str:
    """``--set knob=<text>``: JSON where the CLI decodes it back to ``value``, else raw text."""
    try:
        text = json.dumps(value)
        if json.loads(text) != value and not (isinstance(value, float) and math.isnan(value)):
            raise ValueError
    except (TypeError, ValueError):
        text = str(value)
    return f"{knob}={text}"


@fuzz(ci=25)
@given(case=bad_hparam())
def test_bad_hyperparameter_through_the_cli(
    case: tuple[str, str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    name, knob, value = case
    cwd = tmp_path_factory.mktemp("cwd")
    tail = (["--lr", str(value)] if knob == "lr" and _real(value)
            else ["--set", _set_arg(knob, value)])
    argv = ["train", "--workload", "logreg-breast-cancer", "--optimizer", name, "--steps", "2",
            "--batch-size", "8", *tail]
    with chdir(cwd):
        code, _, err = run_cli(argv)
    if code != 2 and knob == "lr" and not _real(value):
        return  # a non-number after --set lr= that the CLI decodes to a valid number ("0.1x")
    line = assert_one_error_line(code, err, argv)
    assert not any(Path(cwd).iterdir()), f"{argv} left files behind: {list(Path(cwd).iterdir())}"
    del line
