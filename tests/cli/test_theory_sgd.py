"""The ``sgdlab theory sgd-bound`` glue: report contents, validation, and the plot file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from sgdlab.cli.theory_sgd import sgd_bound_report
from sgdlab.errors import ConfigError
from sgdlab.theory import sgd_bounds as sb

PROBLEM = {"mu": 0.5, "L": 1.0, "N": 2.0, "w0_dist2": 9.0}


def test_report_matches_the_theory_functions_and_is_json():
    rep = sgd_bound_report(**PROBLEM, steps=5000, alpha=3.0, points=50)
    closed = sb.diminishing_bound(**PROBLEM, steps=5000, alpha=3.0)
    rec = sb.diminishing_recursion(**PROBLEM, steps=5000, alpha=3.0)
    assert rep["E"] == closed.E == 12.0 and rep["C"] == closed.C
    assert rep["eta0"] == pytest.approx(1 / (2 * PROBLEM["L"]))
    assert rep["final"] == {"bound": closed.final, "recursion": rec.final}
    t = rep["curve"]["t"]
    assert t[0] == 0 and t[-1] == 5000 and len(t) <= 50 and t == sorted(set(t))
    assert rep["curve"]["recursion"] == [float(v) for v in rec.bound[t]]
    assert json.loads(json.dumps(rep, allow_nan=False)) == rep


def test_constant_schedule_defaults_to_the_largest_step():
    rep = sgd_bound_report(**PROBLEM, steps=100, schedule="constant", D=2)
    assert rep["eta"] == 0.25 and rep["E"] is None and rep["C"] is None
    assert rep["noise_floor"] == pytest.approx(0.25 * 2 * 2.0 / 0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "cosine"}, r"Invalid schedule: 'cosine'"),
        ({"eta": 0.1}, r"Invalid eta with schedule='diminishing'"),
        ({"schedule": "constant", "E": 10.0}, r"Invalid E with schedule='constant'"),
        ({"schedule": "constant", "eta": 0.6}, r"Invalid eta: 0\.6"),
        ({"alpha": 1.0}, r"Invalid alpha"),
        ({"measured": np.ones(102)}, r"Invalid measured: need 1 to 101"),
        ({"measured": -np.ones(3)}, r"Invalid measured: values"),
    ],
)
def test_bad_input_is_one_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        sgd_bound_report(**PROBLEM, steps=100, **kwargs)


def test_measured_sgd_is_judged_against_both_curves():
    # Measured E(w_t - w*)² of SGD on f_±(w) = ½ (w ∓ 1)² with μ = L = 1 and σ² = E g*² = 1,
    # averaged over seeded runs; the bounds use N = 2σ² = 2.
    problem = {"mu": 1.0, "L": 1.0, "N": 2.0, "w0_dist2": 4.0}
    steps, runs = 300, 4000
    etas = sb.diminishing_step_sizes(1.0, 1.0, steps, alpha=2.0)
    rng = np.random.default_rng(0)
    w = np.full(runs, 2.0)  # w* = 0
    sq = [np.mean(w**2)]
    for eta in etas:
        w -= eta * (w - rng.choice([-1.0, 1.0], size=runs))
        sq.append(np.mean(w**2))
    measured = np.array(sq)
    rep = sgd_bound_report(**problem, steps=steps, measured=measured)["measured"]
    assert rep["within_bound"] and rep["within_recursion"] and rep["points"] == steps + 1
    assert 0 < rep["max_ratio_to_recursion"] <= 1
    rep = sgd_bound_report(**problem, steps=steps, measured=measured * 10)["measured"]
    assert not rep["within_recursion"] and rep["max_ratio_to_recursion"] > 1


def test_plot_is_written(tmp_path):
    out = tmp_path / "bound.png"
    rep = sgd_bound_report(**PROBLEM, steps=1000, plot=out, measured=np.linspace(9, 0.1, 500))
    assert rep["plot"] == str(out)
    image = imread(out)
    assert image.shape[0] > 100 and len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 3
    with pytest.raises(ConfigError, match="does not exist"):
        sgd_bound_report(**PROBLEM, steps=10, plot=tmp_path / "missing" / "x.png")
