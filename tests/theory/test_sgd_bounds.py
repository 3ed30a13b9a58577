"""The SGD bounds of Nguyen et al. (2018) against exact second moments of SGD on toy problems.

Oracle. On a finite family of quadratics ``f_i(w) = ½ wᵀA_i w - b_iᵀw`` the SGD error
``e_t = w_t - w*`` follows the random affine map ``e_{t+1} = (I - η_t B_k) e_t - η_t h_k`` with
probability ``q_k`` (dense SGD: ``B_k = A_k``, ``h_k = ∇f_k(w*)``). Its mean ``m_t`` and second
moment ``M_t = E[e_t e_tᵀ]`` obey, exactly,

    m_{t+1} = Σ q_k (G_k m_t - η_t h_k),
    M_{t+1} = Σ q_k (G_k M_t G_kᵀ - η_t G_k m_t h_kᵀ - η_t h_k m_tᵀ G_kᵀ + η_t² h_k h_kᵀ),

with ``G_k = I - η_t B_k``, so ``E‖w_t - w*‖² = tr M_t`` with no sampling error. The oracle is
itself checked against a seeded Monte-Carlo run of SGD.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgdlab.errors import ConfigError
from sgdlab.theory import sgd_bounds as sb

# --- toy problems and the exact oracle -------------------------------------------------------


@dataclasses.dataclass
class LeastSquares:
    """``f_i(w) = ½ (x_iᵀw - y_i)²`` sampled uniformly; every constant exact."""

    X: np.ndarray
    y: np.ndarray

    @property
    def p(self) -> np.ndarray:
        return np.full(len(self.y), 1.0 / len(self.y))

    @property
    def A(self) -> np.ndarray:  # Hessians x_i x_iᵀ, shape (n, d, d)
        return np.einsum("ni,nj->nij", self.X, self.X)

    @property
    def w_star(self) -> np.ndarray:
        return np.linalg.solve(self.X.T @ self.X, self.X.T @ self.y)

    @property
    def g_star(self) -> np.ndarray:  # ∇f_i(w*) = (x_iᵀw* - y_i) x_i, shape (n, d)
        return (self.X @ self.w_star - self.y)[:, None] * self.X

    @property
    def mu(self) -> float:
        return float(np.linalg.eigvalsh(self.X.T @ self.X / len(self.y))[0])

    @property
    def L(self) -> float:  # f_i is ‖x_i‖²-smooth
        return float(np.max(np.sum(self.X**2, axis=1)))

    @property
    def N(self) -> float:
        return float(2.0 * np.mean(np.sum(self.g_star**2, axis=1)))

    def F(self, w: np.ndarray) -> np.ndarray:
        return 0.5 * np.mean((w @ self.X.T - self.y) ** 2, axis=-1)

    def grad_second_moment(self, w: np.ndarray) -> np.ndarray:
        """``E_i‖∇f_i(w)‖² = mean_i (x_iᵀw - y_i)² ‖x_i‖²`` for each row of ``w``."""
        res = w @ self.X.T - self.y
        return np.mean(res**2 * np.sum(self.X**2, axis=1), axis=-1)


def make_problem(seed: int = 0, n: int = 6, d: int = 3) -> LeastSquares:
    rng = np.random.default_rng(seed)
    # Rows of unequal norm, so that Σ p_i ‖x_i‖² g_i ≠ 0 and the lemma's slack is not symmetric.
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5, size=(n, 1))
    y = X @ rng.normal(size=d) + rng.normal(size=n)
    return LeastSquares(X, y)


def exact_mse(
    B: np.ndarray, h: np.ndarray, q: np.ndarray, e0: np.ndarray, etas: np.ndarray
) -> np.ndarray:
    """``tr M_t`` for ``t = 0..len(etas)`` by the moment recursion of the module docstring."""
    d = e0.size
    m, M = e0.astype(float), np.outer(e0, e0)
    qh = q @ h
    hh = np.einsum("k,ki,kj->ij", q, h, h)
    out = np.empty(len(etas) + 1)
    out[0] = np.trace(M)
    for t, eta in enumerate(etas):
        G = np.eye(d) - eta * B
        Gm = G @ m
        cross = eta * np.einsum("k,ki,kj->ij", q, Gm, h)
        M = np.einsum("k,kij,klj->il", q, G @ M, G) - cross - cross.T + eta**2 * hh
        m = q @ Gm - eta * qh
        out[t + 1] = np.trace(M)
    return out


def dense_oracle(prob: LeastSquares, e0: np.ndarray, etas: np.ndarray) -> np.ndarray:
    return exact_mse(prob.A, prob.g_star, prob.p, e0, etas)


def start(prob: LeastSquares, dist2: float, seed: int = 1) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=prob.X.shape[1])
    return v * np.sqrt(dist2) / np.linalg.norm(v)


# --- the lemma -------------------------------------------------------------------------------


def test_lemma_holds_on_random_points():
    prob = make_problem()
    rng = np.random.default_rng(2)
    w = prob.w_star + rng.normal(size=(4000, 3)) * rng.lognormal(0.0, 2.0, size=(4000, 1))
    gap = prob.F(w) - prob.F(prob.w_star)
    lhs = prob.grad_second_moment(w)
    rhs = sb.gradient_second_moment_bound(gap, prob.L, prob.N)
    assert np.all(lhs <= rhs * (1 + 1e-12))


def test_lemma_halved_or_without_noise_is_violated():
    prob = make_problem()
    ws = prob.w_star
    # At w*: E‖∇f‖² = N/2 > 0, so a bound with no noise term (bounded gradients at w* = 0) fails.
    assert prob.grad_second_moment(ws) == pytest.approx(prob.N / 2)
    assert prob.grad_second_moment(ws) > sb.gradient_second_moment_bound(0.0, prob.L, 0.0)
    # Half the bound, 2L·gap + N/2, fails near w* along u = Σ p_i A_i g_i: there E‖∇f‖² - N/2
    # grows like 2ε‖u‖ while the gap term grows like ε².
    u = np.einsum("k,kij,kj->i", prob.p, prob.A, prob.g_star)
    w = ws + 1e-3 * u / np.linalg.norm(u)
    half = sb.gradient_second_moment_bound(prob.F(w) - prob.F(ws), prob.L, prob.N) / 2
    assert prob.grad_second_moment(w) > half


def test_noise_constant_weights_match_repeated_rows():
    g = np.array([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]])
    weighted = sb.noise_constant(g, np.array([0.5, 0.25, 0.25]))
    assert weighted == pytest.approx(sb.noise_constant(g[[0, 0, 1, 2]]))
    assert sb.noise_constant(make_problem().g_star) == pytest.approx(make_problem().N)


# --- the oracle is right ---------------------------------------------------------------------


def test_exact_oracle_matches_monte_carlo_sgd():
    prob = make_problem()
    e0 = start(prob, 4.0)
    etas = sb.diminishing_step_sizes(prob.mu, prob.L, steps=60, alpha=2.0)
    exact = dense_oracle(prob, e0, etas)
    rng = np.random.default_rng(3)
    runs = 20000
    w = np.tile(prob.w_star + e0, (runs, 1))
    sq = np.empty((len(etas) + 1, runs))
    sq[0] = np.sum((w - prob.w_star) ** 2, axis=1)
    for t, eta in enumerate(etas):
        i = rng.integers(len(prob.y), size=runs)
        x = prob.X[i]
        w -= eta * (np.sum(x * w, axis=1) - prob.y[i])[:, None] * x
        sq[t + 1] = np.sum((w - prob.w_star) ** 2, axis=1)
    mean, se = sq.mean(axis=1), sq.std(axis=1) / np.sqrt(runs)
    assert np.all(np.abs(mean - exact) <= 5 * se + 1e-12)
    # ...and the check has teeth: the oracle of another step size is rejected.
    other = dense_oracle(prob, e0, 1.3 * etas)
    assert np.any(np.abs(mean - other) > 5 * se)


# --- the bounds hold on the exact curve ------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.5, 2.0, 4.0])
@pytest.mark.parametrize("shift_factor", [1.0, 3.0])
@pytest.mark.parametrize("dist2", [0.0, 1.0, 25.0])
def test_diminishing_exact_below_recursion_below_closed_form(alpha, shift_factor, dist2):
    prob = make_problem()
    steps = 1500
    E = shift_factor * sb.min_shift(prob.mu, prob.L, alpha)
    args = (prob.mu, prob.L, prob.N, dist2, steps)
    closed = sb.diminishing_bound(*args, alpha=alpha, E=E)
    rec = sb.diminishing_recursion(*args, alpha=alpha, E=E)
    exact = dense_oracle(prob, start(prob, dist2), sb.diminishing_step_sizes(
        prob.mu, prob.L, steps, alpha, E))
    assert exact[0] == pytest.approx(dist2)
    assert np.all(exact <= rec.bound * (1 + 1e-9))
    assert np.all(rec.bound <= closed.bound * (1 + 1e-12))
    assert closed.C == max(E * dist2, alpha**2 * prob.N / (prob.mu**2 * (alpha - 1)))


def test_diminishing_closed_form_is_not_loose_by_half_or_misread_constant():
    prob = make_problem()
    alpha, dist2, steps = 2.0, 25.0, 200
    closed = sb.diminishing_bound(prob.mu, prob.L, prob.N, dist2, steps, alpha=alpha)
    exact = dense_oracle(prob, start(prob, dist2), sb.diminishing_step_sizes(
        prob.mu, prob.L, steps, alpha))
    assert np.all(exact <= closed.bound)
    assert np.any(exact[1:] > closed.bound[1:] / 2)  # half the bound is wrong, after t = 0 too
    # C read as max{‖w0 - w*‖², ...} (no factor E) gives a "bound" below y_0 itself.
    assert closed.E is not None
    misread_C = max(dist2, alpha**2 * prob.N / (prob.mu**2 * (alpha - 1)))
    assert exact[0] > misread_C / closed.E


def test_diminishing_closed_form_tight_within_derived_factor():
    """Isotropic 1-D case: f_±(w) = (a/2)(w ∓ 1)², so μ = L = a, σ² = E g*² = a², N = 2a².

    From w* the exact recursion is y_{t+1} = (1 - aη_t)² y_t + η_t² σ². Putting y_t ≈ K/τ,
    τ = t + E, into it gives K (2α - 1) = α²σ²/a², whereas the bound has C = 2α²σ²/(a²(α-1)):
    the closed form is k = 2(2α - 1)/(α - 1) times the exact curve as t → ∞, so dividing it by k
    must break it somewhere.
    """
    a = 1.5
    sigma2 = a * a
    for alpha in (1.5, 2.0, 4.0):
        steps = 20000
        closed = sb.diminishing_bound(a, a, 2 * sigma2, 0.0, steps, alpha=alpha)
        etas = sb.diminishing_step_sizes(a, a, steps, alpha)
        y = np.zeros(steps + 1)
        for t, eta in enumerate(etas):
            y[t + 1] = (1 - a * eta) ** 2 * y[t] + eta**2 * sigma2
        k = 2 * (2 * alpha - 1) / (alpha - 1)
        assert closed.E is not None
        K = alpha**2 * sigma2 / (a * a * (2 * alpha - 1))
        assert y[-1] * (steps + closed.E) == pytest.approx(K, rel=1e-3)  # the oracle's limit
        assert np.all(y <= closed.bound)
        assert np.any(y > closed.bound / k)


@pytest.mark.parametrize("eta_factor", [1.0, 0.25])
@pytest.mark.parametrize("dist2", [0.0, 9.0])
def test_constant_exact_below_recursion_below_closed_form(eta_factor, dist2):
    prob = make_problem(seed=4)
    steps = 800
    eta = eta_factor * sb.max_constant_step(prob.L)
    args = (prob.mu, prob.L, prob.N, dist2, steps)
    closed = sb.constant_bound(*args, eta=eta)
    rec = sb.constant_recursion(*args, eta=eta)
    exact = dense_oracle(prob, start(prob, dist2), np.full(steps, eta))
    assert np.all(exact <= rec.bound * (1 + 1e-9))
    assert np.all(rec.bound <= closed.bound * (1 + 1e-12))


def test_constant_noise_floor_within_factor_four():
    """1-D isotropic case as above: the stationary exact value is y∞ = η²σ² / (1 - (1 - aη)²)
    = ησ²/(a(2 - aη)), the floor of the bound is ηN/μ = 2ησ²/a, their ratio 2(2 - aη) < 4."""
    a, sigma2 = 2.0, 4.0
    eta = sb.max_constant_step(a)
    y_inf = eta * sigma2 / (a * (2 - a * eta))
    y = 0.0
    for _ in range(200):
        y = (1 - a * eta) ** 2 * y + eta**2 * sigma2
    assert y == pytest.approx(y_inf)
    floor = sb.constant_bound(a, a, 2 * sigma2, 0.0, 200, eta=eta).final
    assert y_inf <= floor
    assert y_inf > floor / 4


# --- the vectorised recursion is the loop ----------------------------------------------------


def test_vectorised_recursion_matches_loop():
    rng = np.random.default_rng(5)
    etas = rng.uniform(0.0, 0.5, size=20000)
    for noise, y0 in [(1.0, 3.0), (0.0, 3.0), (2.0, 0.0), (1e-8, 1e6)]:
        loop = sb._recursion_loop(etas, 0.7, noise, y0)
        fast = sb._recursion(etas, 0.7, noise, y0)
        np.testing.assert_allclose(fast, loop, rtol=1e-10, atol=1e-300)  # denormals


def test_schedules_agree_with_generic_recursion():
    mu, L, N, d2 = 0.3, 2.0, 0.7, 5.0
    dim = sb.diminishing_recursion(mu, L, N, d2, 500, alpha=3.0, D=2)
    gen = sb.recursion_bound(sb.diminishing_step_sizes(mu, L, 500, 3.0, D=2), mu, L, N, d2, D=2)
    np.testing.assert_allclose(dim.bound, gen.bound, rtol=1e-12)
    const = sb.constant_recursion(mu, L, N, d2, 500, eta=0.1, D=2)
    gen = sb.recursion_bound(np.full(500, 0.1), mu, L, N, d2, D=2)
    np.testing.assert_allclose(const.bound, gen.bound, rtol=1e-10)


def test_million_steps_large_alpha_stays_finite_and_below_closed_form():
    # (E/(t+E))^α underflows a plain product here; the log-space sum must not.
    args = (0.01, 1.0, 1.0, 100.0, 10**6)
    rec = sb.diminishing_recursion(*args, alpha=80.0)
    closed = sb.diminishing_bound(*args, alpha=80.0)
    assert np.all(np.isfinite(rec.bound)) and np.all(rec.bound > 0)
    assert np.all(rec.bound <= closed.bound * (1 + 1e-9))


@settings(max_examples=60, deadline=None)
@given(
    mu=st.floats(1e-3, 1.0),
    L_over_mu=st.floats(1.0, 1e3),
    N=st.floats(0.0, 1e3),
    d2=st.floats(0.0, 1e3),
    alpha=st.floats(1.01, 20.0),
    shift=st.floats(1.0, 10.0),
    D=st.integers(1, 8),
)
def test_recursion_never_above_closed_form(mu, L_over_mu, N, d2, alpha, shift, D):
    L = mu * L_over_mu
    E = shift * sb.min_shift(mu, L, alpha, D)
    rec = sb.diminishing_recursion(mu, L, N, d2, 400, alpha=alpha, E=E, D=D)
    closed = sb.diminishing_bound(mu, L, N, d2, 400, alpha=alpha, E=E, D=D)
    assert np.all(rec.bound <= closed.bound * (1 + 1e-9))
    eta = sb.max_constant_step(L, D) / shift
    rec = sb.constant_recursion(mu, L, N, d2, 400, eta=eta, D=D)
    assert np.all(rec.bound <= sb.constant_bound(mu, L, N, d2, 400, eta=eta, D=D).bound)


# --- the sparse single-coordinate update -----------------------------------------------------


def make_sparse_problem(seed: int = 7, n: int = 12, d: int = 5, D: int = 3):
    """Least squares whose rows x_i live on supports of size 1..D; returns (problem, supports)."""
    rng = np.random.default_rng(seed)
    supports = [np.sort(rng.choice(d, size=rng.integers(1, D + 1), replace=False))
                for _ in range(n)]
    X = np.zeros((n, d))
    for i, s in enumerate(supports):
        X[i, s] = rng.normal(size=len(s))
    y = X @ rng.normal(size=d) + rng.normal(size=n)
    return LeastSquares(X, y), supports


def sparse_affine_map(prob: LeastSquares, supports) -> tuple[np.ndarray, ...]:
    """The update w_u -= η d_i ∂_u f_i(w), u uniform on supp(x_i), as the oracle's (B, h, q):
    one branch per pair (i, u) with probability p_i/d_i, B = d_i e_u e_uᵀ A_i, h = d_i e_u e_uᵀ g_i.
    """
    d = prob.X.shape[1]
    B, h, q = [], [], []
    for i, s in enumerate(supports):
        for u in s:
            P = np.zeros((d, d))
            P[u, u] = 1.0
            B.append(len(s) * P @ prob.A[i])
            h.append(len(s) * P @ prob.g_star[i])
            q.append(prob.p[i] / len(s))
    return np.array(B), np.array(h), np.array(q)


def test_sparse_oracle_matches_monte_carlo_coordinate_updates():
    prob, supports = make_sparse_problem()
    D = max(len(s) for s in supports)
    e0 = start(prob, 4.0)
    etas = sb.diminishing_step_sizes(prob.mu, prob.L, steps=40, alpha=2.0, D=D)
    exact = exact_mse(*sparse_affine_map(prob, supports), e0, etas)
    rng = np.random.default_rng(8)
    runs = 20000
    w = np.tile(prob.w_star + e0, (runs, 1))
    rows = np.arange(runs)
    sizes = np.array([len(s) for s in supports])
    padded = np.array([np.resize(s, D) for s in supports])  # any entry of s, for indexing only
    for eta in etas:
        i = rng.integers(len(prob.y), size=runs)
        u = padded[i, rng.integers(sizes[i])]  # uniform over the first d_i entries = supp(x_i)
        grad_u = (np.sum(prob.X[i] * w, axis=1) - prob.y[i]) * prob.X[i, u]
        w[rows, u] -= eta * sizes[i] * grad_u
    sq = np.sum((w - prob.w_star) ** 2, axis=1)
    assert abs(sq.mean() - exact[-1]) <= 5 * sq.std() / np.sqrt(runs)


@pytest.mark.parametrize("dist2", [0.0, 4.0])
def test_sparse_update_stays_under_its_bounds(dist2):
    prob, supports = make_sparse_problem()
    D = max(len(s) for s in supports)
    assert D == 3
    affine = sparse_affine_map(prob, supports)
    e0, steps = start(prob, dist2), 2000
    args = (prob.mu, prob.L, prob.N, dist2, steps)
    etas = sb.diminishing_step_sizes(prob.mu, prob.L, steps, alpha=2.0, D=D)
    exact = exact_mse(*affine, e0, etas)
    rec = sb.diminishing_recursion(*args, alpha=2.0, D=D)
    assert np.all(exact <= rec.bound * (1 + 1e-9))
    assert np.all(rec.bound <= sb.diminishing_bound(*args, alpha=2.0, D=D).bound * (1 + 1e-12))
    eta = sb.max_constant_step(prob.L, D)
    exact = exact_mse(*affine, e0, np.full(steps, eta))
    rec = sb.constant_recursion(*args, eta=eta, D=D)
    assert np.all(exact <= rec.bound * (1 + 1e-9))
    assert np.all(rec.bound <= sb.constant_bound(*args, eta=eta, D=D).bound * (1 + 1e-12))


def test_sparse_update_breaks_the_dense_noise_term():
    # Same steps, but the recursion with N instead of D·N: the single-coordinate update, started
    # at w*, has d_ξ times the gradient noise of SGD and overshoots it.
    prob, supports = make_sparse_problem()
    etas = sb.diminishing_step_sizes(prob.mu, prob.L, 500, alpha=2.0, D=3)
    exact = exact_mse(*sparse_affine_map(prob, supports), start(prob, 0.0), etas)
    dense = sb.recursion_bound(etas, prob.mu, prob.L, prob.N, 0.0, D=1)
    assert np.any(exact > dense.bound)


# --- inputs and results ----------------------------------------------------------------------

GOOD = {"mu": 0.5, "L": 2.0, "N": 1.0, "w0_dist2": 1.0, "steps": 10}


@pytest.mark.parametrize(
    ("func", "overrides", "match"),
    [
        (sb.diminishing_bound, {"alpha": 1.0}, r"Invalid alpha: 1\.0"),
        (sb.diminishing_bound, {"alpha": 0.5}, r"Invalid alpha"),
        (sb.diminishing_bound, {"E": 15.9}, r"Invalid E: 15\.9 < 2\*alpha\*L\*D/mu = 16\.0"),
        (sb.diminishing_recursion, {"E": 20.0, "D": 2}, r"Invalid E: 20\.0 .*D=2"),
        (sb.diminishing_bound, {"mu": 3.0}, r"Invalid mu, L: mu=3\.0 > L=2\.0"),
        (sb.diminishing_bound, {"mu": 0.0}, r"Invalid mu: 0\.0"),
        (sb.diminishing_bound, {"L": -1.0}, r"Invalid L: -1\.0"),
        (sb.diminishing_bound, {"N": -1.0}, r"Invalid N: -1\.0"),
        (sb.diminishing_bound, {"w0_dist2": float("nan")}, r"Invalid w0_dist2: nan"),
        (sb.diminishing_bound, {"steps": -1}, r"Invalid steps: -1"),
        (sb.diminishing_bound, {"steps": 2.5}, r"Invalid steps: 2\.5"),
        (sb.diminishing_bound, {"D": 0}, r"Invalid D: 0"),
        (sb.constant_bound, {"eta": 0.26}, r"Invalid eta: 0\.26 > 1/\(2\*L\*D\) = 0\.25"),
        (sb.constant_recursion, {"eta": 0.2, "D": 2}, r"Invalid eta: 0\.2 .*D=2"),
        (sb.constant_bound, {"eta": 0.0}, r"Invalid eta: 0\.0"),
        (sb.constant_bound, {"eta": 0.1, "mu": float("inf")}, r"Invalid mu: inf"),
    ],
)
def test_bad_inputs_raise_naming_the_knob(func, overrides, match):
    kwargs = {**GOOD, **({"eta": 0.1} if func in (sb.constant_bound, sb.constant_recursion)
                         else {}), **overrides}
    with pytest.raises(ValueError, match=match) as info:
        func(**kwargs)
    assert isinstance(info.value, ConfigError)


def test_recursion_bound_rejects_a_step_beyond_the_limit():
    etas = np.array([0.1, 0.25, 0.3])
    with pytest.raises(ValueError, match=r"Invalid etas\[2\]: 0\.3 > 1/\(2\*L\*D\) = 0\.25"):
        sb.recursion_bound(etas, mu=0.5, L=2.0, N=1.0, w0_dist2=1.0)
    with pytest.raises(ValueError, match=r"Invalid etas"):
        sb.recursion_bound(np.array([[0.1]]), mu=0.5, L=2.0, N=1.0, w0_dist2=1.0)


def test_boundary_values_are_accepted():
    # E = 2αLD/μ and η = 1/(2LD) exactly are the edges of the theorems, not outside them.
    assert sb.diminishing_bound(**GOOD, E=2 * 2.0 * 2.0 / 0.5).E == 16.0
    assert sb.constant_bound(**GOOD, eta=1 / (2 * 2.0)).eta == 0.25
    assert sb.diminishing_bound(**{**GOOD, "mu": 2.0}).mu == 2.0  # μ = L
    assert sb.diminishing_bound(**{**GOOD, "steps": 0}).bound.shape == (1,)


def test_bound_curve_is_frozen_and_read_only():
    curve = sb.diminishing_bound(**GOOD)
    assert (curve.kind, curve.steps, curve.alpha, curve.eta) == ("diminishing", 10, 2.0, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        curve.C = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        curve.bound[0] = 0.0
