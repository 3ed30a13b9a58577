"""Biased SGD against practice: gradients, error directions, the bound holds, a wrong one fails."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from sgdlab.errors import ConfigError
from sgdlab.experiments.biased_practice import (
    FiniteSumProblem,
    biased_practice_showcase,
    bound_curve,
    compare_to_bound,
    logistic_problem,
    practice_report,
    quadratic_problem,
    run_biased_sgd,
)
from sgdlab.experiments.suites import SHOWCASES
from sgdlab.report.sections import ShowcaseContext
from sgdlab.theory.biased_sgd import sequential_schedule
from sgdlab.workloads import get_workload
from sgdlab.workloads.constants import estimate_constants


@pytest.fixture(scope="module")
def breast_cancer():
    return get_workload("logreg-breast-cancer", l2=0.5)


def _isotropic(m: float, dim: int = 3) -> FiniteSumProblem:
    """f_i(x) = (m/2)‖x − x*‖² for every i: σ² = 0, L = m."""
    x_star = np.arange(1.0, dim + 1.0)
    return FiniteSumProblem("isotropic", m, m, 0.0, x_star, 5, lambda th, idx: m * (th - x_star))


def test_logistic_gradient_matches_autograd_and_sigma2(breast_cancer):
    p = logistic_problem(breast_cancer)
    rng = np.random.default_rng(1)
    theta = rng.standard_normal((4, p.optimum.size))
    idx = np.array([0, 7, 100, 455])
    ours = p.grad(theta, idx)
    model = breast_cancer.make_model(0).double()
    for s, i in enumerate(idx):
        w, b = theta[s].reshape(1, -1)[:, :-1], theta[s][-1:]
        model.linear.weight.data = torch.from_numpy(w.copy())
        model.linear.bias.data = torch.from_numpy(b.copy())
        model.zero_grad()
        x, y = breast_cancer.batch(torch.tensor([int(i)]))
        breast_cancer.loss(model, x.double(), y).backward()
        ref = torch.cat([model.linear.weight.grad.ravel(), model.linear.bias.grad])
        np.testing.assert_allclose(ours[s], ref.numpy(), rtol=1e-10, atol=1e-12)
    g_star = p.grad(np.tile(p.optimum, (p.n, 1)), np.arange(p.n))
    consts = estimate_constants(breast_cancer)
    assert p.sigma2 == consts.grad_sq and (p.m, p.L) == (consts.mu, consts.L)
    assert (g_star * g_star).sum(1).mean() == pytest.approx(consts.grad_sq, rel=1e-9)
    assert np.abs(g_star.mean(0)).max() < 1e-7  # θ* is the optimum of the mean


def test_quadratic_constants_hold_on_random_pairs():
    p = quadratic_problem(n=60, d=6, lam=0.1, seed=3)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 60, 6))
    idx = np.arange(60)
    gx, gy = p.grad(x, idx), p.grad(y, idx)
    # Every component is L-smooth; the mean is m-strongly convex, and tight at the eigenvector.
    lip = np.linalg.norm(gx - gy, axis=1) / np.linalg.norm(x - y, axis=1)
    assert lip.max() <= p.L * (1 + 1e-12)
    full = [p.grad(np.tile(v, (60, 1)), idx).mean(0) for v in (x[0], y[0])]
    d = x[0] - y[0]
    assert (full[0] - full[1]) @ d >= p.m * (d @ d) * (1 - 1e-12)
    g_star = p.grad(np.tile(p.optimum, (60, 1)), idx)
    assert np.abs(g_star.mean(0)).max() < 1e-12
    assert p.sigma2 == pytest.approx((g_star * g_star).sum(1).mean())


def test_adversarial_error_reaches_the_floor_random_does_not():
    # ‖x⁺‖ = (1 − αm)‖x‖ + αc has the fixed point c/m: the floor c²/m², whatever α.
    m, c, alpha = 0.5, 0.2, 0.1
    p = _isotropic(m)
    alphas = np.full(600, alpha)
    adv = run_biased_sgd(p, alphas, delta=0.0, c=c, direction="adversarial", seeds=2)
    rnd = run_biased_sgd(p, alphas, delta=0.0, c=c, direction="random", seeds=64)
    none = run_biased_sgd(p, alphas, delta=0.0, c=c, direction="none", seeds=1)
    assert adv[-1] == pytest.approx((c / m) ** 2, rel=1e-9)
    # Random directions only add variance α²c² a step: E‖x‖² → α²c²/(1 − (1 − αm)²).
    stationary = alpha**2 * c**2 / (1 - (1 - alpha * m) ** 2)
    assert rnd[-100:].mean() == pytest.approx(stationary, rel=0.15)
    assert stationary < 0.1 * (c / m) ** 2
    assert none[-1, 0] == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize(
    ("case", "delta", "steps"),
    # Biased smooth-convex has no closed form: its schedule solves one SDP a step (~2 ms).
    [("smooth-convex", 0.0, 3000), ("smooth", 0.003, 6000), ("smooth-convex", 0.02, 400)],
)
def test_quadratic_runs_under_the_bound_and_adversary_breaks_the_wrong_one(case, delta, steps):
    p = quadratic_problem(n=200, d=20, lam=0.05, seed=0)
    runs = compare_to_bound(p, case, delta=delta, c=0.05, steps=steps, seeds=8)
    assert len(runs) == 4
    for r in runs:
        assert r.under_bound, (r.plan, r.direction, r.summary())
        assert np.all(np.diff(r.bound) <= 1e-12) or r.plan == "constant"
    adversarial = [r for r in runs if r.direction == "adversarial" and r.plan == "schedule"]
    if steps >= 3000:
        # The bound without the error term is wrong, and the adversarial run shows it.
        assert adversarial[0].summary()["max mean/unbiased bound"] > 1.05


def test_bound_curve_reproduces_the_schedule_and_grows_with_the_error():
    p = quadratic_problem(n=50, d=5, lam=0.1)
    U0 = float(p.optimum @ p.optimum)
    s = p.setting("smooth", delta=0.01, c=0.1)
    sch = sequential_schedule(s, U0, 200)
    np.testing.assert_allclose(bound_curve(s, U0, np.asarray(sch.alphas)), sch.bounds, rtol=1e-9)
    alphas = np.full(200, float(sch.alphas[0]))
    assert np.all(bound_curve(p.setting("smooth"), U0, alphas)[1:] < bound_curve(s, U0, alphas)[1:])
    # No closed form (smooth-convex, δ > 0): one SDP certificate, still a bound.
    sc = p.setting("smooth-convex", delta=0.05, c=0.1)
    curve = bound_curve(sc, U0, np.full(50, 0.05))
    assert np.all(np.isfinite(curve)) and curve[1] >= curve[-1] > 0


def test_report_is_json_and_draws_its_plot(tmp_path, breast_cancer):
    p = logistic_problem(breast_cancer)
    rep = practice_report(p, steps=300, seeds=3, alpha=1e-3, plot=tmp_path / "p.png")
    assert json.loads(json.dumps(rep, allow_nan=False)) == rep
    assert Path(rep["plot"]).stat().st_size > 10_000
    assert rep["c"] == pytest.approx(p.m * math.sqrt(rep["U0"] / 10))
    assert rep["floor"] == pytest.approx(rep["U0"] / 10)  # δ = 0: c²/m²
    assert {(r["plan"], r["alpha first"]) for r in rep["rows"]} >= {("constant", 1e-3)}


def test_showcase_is_registered_and_under_the_bound(tmp_path):
    assert "sgdlab.experiments.biased_practice:biased_practice_showcase" in SHOWCASES["quick"]
    ctx = ShowcaseContext(tmp_path, tmp_path, "t", True, Console(quiet=True))
    section = biased_practice_showcase(ctx)
    assert section.images[0].exists() and len(section.rows) == 4
    assert all(r["under bound"] for r in section.rows)
    assert "under the bound at every step: True" in section.text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"direction": "sideways"}, r"Invalid direction: 'sideways'"),
        ({"seeds": 0}, r"Invalid seeds: 0"),
        ({"delta": -1.0}, r"Invalid delta: -1.0"),
        ({"c": math.nan}, r"Invalid c: nan"),
    ],
)
def test_run_rejects_bad_input(kwargs, match):
    args = {"delta": 0.0, "c": 0.1, "direction": "random", "seeds": 2} | kwargs
    with pytest.raises(ConfigError, match=match):
        run_biased_sgd(_isotropic(1.0), np.full(3, 0.1), **args)


def test_experiment_rejects_bad_input(breast_cancer):
    p = _isotropic(1.0)
    with pytest.raises(ConfigError, match=r"Invalid steps: 0"):
        compare_to_bound(p, "smooth", delta=0.0, c=0.1, steps=0)
    with pytest.raises(ConfigError, match=r"Invalid plan: 'fast'"):
        compare_to_bound(p, "smooth", delta=0.0, c=0.1, steps=5, plans=("fast",))
    with pytest.raises(ConfigError, match=r"Invalid alpha: -1"):
        compare_to_bound(p, "smooth", delta=0.0, c=0.1, steps=5, alpha=-1.0)
    with pytest.raises(ConfigError, match=r"Invalid lam: 0"):
        quadratic_problem(lam=0.0)
    with pytest.raises(ConfigError, match=r"Invalid rows: 0"):
        logistic_problem(breast_cancer, rows=0)
    with pytest.raises(ConfigError, match=r"needs a dense convex linear workload"):
        logistic_problem(get_workload("sparse-logreg", n_samples=200))


def test_cli_bench_biased_sgd_prints_json_and_rejects_bad_case(tmp_path, capsys):
    from sgdlab.cli import main

    plot = tmp_path / "q.png"
    argv = ["bench", "biased-sgd", "--workload", "quadratic", "--steps", "200", "--seeds", "2",
            "--plot", str(plot), "--json"]
    assert main(argv) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["steps"] == 200 and len(rep["rows"]) == 4 and plot.exists()
    assert main(["bench", "biased-sgd", "--case", "bogus", "--plot", str(plot)]) == 2
    assert "error: Invalid case: 'bogus'" in capsys.readouterr().err
