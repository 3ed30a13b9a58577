"""μ, L, N of the linear workloads: closed forms against autograd, and the sparse decomposition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgdlab.errors import ConfigError
from sgdlab.theory.sgd_bounds import noise_constant
from sgdlab.workloads.base import SparseRows, Workload
from sgdlab.workloads.constants import (
    estimate_constants,
    feature_frequency,
    per_sample_grad_sq,
    smoothness,
)
from sgdlab.workloads.convex import compute_optimum
from sgdlab.workloads.models import MLP
from sgdlab.workloads.registry import linear_workload
from sgdlab.workloads.sparse import generate_rcv1like


def _workload(x, y, classes: int, l2: float) -> Workload:
    return linear_workload(
        "tiny", x, y, x, y, classes, l2,
        optimum_fn=lambda w: compute_optimum(w, grad_tol=1e-9, max_rounds=10),
    )


def dense_multinomial(l2: float = 0.05) -> Workload:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 5, generator=g)
    y = torch.randint(0, 3, (60,), generator=g)
    return _workload(x, y, 3, l2)


def dense_binary(l2: float = 0.1) -> Workload:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, 4, generator=g) * 2
    y = (x[:, 0] + torch.randn(50, generator=g) > 0).long()
    return _workload(x, y, 2, l2)


def tiny_sparse(l2: float = 0.05) -> Workload:
    x, y, _, _ = generate_rcv1like(80, 0, n_features=64, avg_nnz=6, seed=2)
    return _workload(SparseRows(x), torch.from_numpy(y), 2, l2)


def _dense_x(w: Workload) -> torch.Tensor:
    x = w.x_train
    if isinstance(x, SparseRows):
        return x.take(torch.arange(len(x))).to_dense().double()
    return x.double()


def _inverse_p(x: torch.Tensor) -> torch.Tensor:
    p = (x != 0).double().mean(0)
    return torch.where(p > 0, 1 / p.clamp_min(1e-12), torch.zeros_like(p))


def component(w: Workload, x: torch.Tensor, i: int, th: torch.Tensor, inv_p) -> torch.Tensor:
    """f_i(θ): the loss of sample i plus λ/2‖θ‖² (or, sparse, λ/2 Σ_{j∈S_i} θ_j²/p_j)."""
    classes = 1 if w.num_classes == 2 else w.num_classes
    d = x.shape[1]
    W, b = th[: classes * d].view(classes, d), th[classes * d :]
    z = W @ x[i] + b
    y = w.y_train[i : i + 1]
    if classes == 1:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y.double())
    else:
        loss = torch.nn.functional.cross_entropy(z.unsqueeze(0), y)
    if inv_p is None:
        reg = th.pow(2).sum()
    else:
        reg = (W.pow(2) * (x[i] != 0).double() * inv_p).sum() + b.pow(2).sum()
    return loss + 0.5 * w.l2 * reg


def autograd_grads(w: Workload, theta: torch.Tensor, sparse: bool) -> torch.Tensor:
    """Per-sample gradients of f_i (dense, or with the support-rescaled penalty), by autograd."""
    x = _dense_x(w)
    inv_p = _inverse_p(x) if sparse else None
    rows = []
    for i in range(w.num_train):
        th = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(component(w, x, i, th, inv_p), th)
        rows.append(g)
    return torch.stack(rows)


def _split(w: Workload, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    classes = 1 if w.num_classes == 2 else w.num_classes
    d = theta.numel() // classes - 1
    return theta[: classes * d].view(classes, d), theta[classes * d :]


@pytest.mark.parametrize(
    ("make", "sparse"),
    [(dense_binary, False), (dense_multinomial, False), (tiny_sparse, False), (tiny_sparse, True)],
)
def test_closed_form_matches_autograd(make, sparse):
    w = make()
    classes = 1 if w.num_classes == 2 else w.num_classes
    d = w.x_train.shape[1]
    theta = torch.randn(classes * (d + 1), generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    W, b = _split(w, theta)
    got = per_sample_grad_sq(w, W, b, sparse=sparse)
    want = autograd_grads(w, theta, sparse).pow(2).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_sparse_components_average_to_the_full_gradient():
    w = tiny_sparse()
    x = _dense_x(w)
    d = x.shape[1]
    theta = torch.randn(d + 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theta[:d][(x != 0).sum(0) == 0] = 0.0  # coordinates no row touches sit at θ*_j = 0
    mean_sparse = autograd_grads(w, theta, sparse=True).mean(0)
    mean_dense = autograd_grads(w, theta, sparse=False).mean(0)
    torch.testing.assert_close(mean_sparse, mean_dense, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("make", "sparse"), [(dense_multinomial, False), (tiny_sparse, True)])
def test_L_bounds_every_component_hessian(make, sparse):
    w = make()
    L = smoothness(w, sparse=sparse)
    classes = 1 if w.num_classes == 2 else w.num_classes
    n_par = classes * (w.x_train.shape[1] + 1)
    x = _dense_x(w)
    inv_p = _inverse_p(x) if sparse else None
    worst = 0.0
    for seed in range(3):
        theta0 = 0.3 * torch.randn(n_par, generator=torch.Generator().manual_seed(seed),
                                   dtype=torch.float64)
        for i in range(0, w.num_train, 5):
            hess = torch.autograd.functional.hessian(
                lambda th, i=i: component(w, x, i, th, inv_p), theta0)
            worst = max(worst, float(torch.linalg.eigvalsh(hess).max()))
    assert worst <= L + 1e-12
    assert worst >= 0.2 * L  # an upper bound, but not a vacuous one


def test_estimate_constants_matches_autograd_noise_at_the_optimum():
    w = dense_multinomial()
    c = estimate_constants(w)
    theta = torch.from_numpy(w.optimum().flat())
    grads = autograd_grads(w, theta, sparse=False)
    assert float(grads.mean(0).norm()) < 1e-7  # θ* is the optimum: E ∇f_i(θ*) = 0
    assert c.N == pytest.approx(noise_constant(grads.numpy()), rel=1e-9)
    assert (c.mu, c.L, c.D, c.sparse) == (w.l2, w.L, 6, False)
    assert c.noise(4) == pytest.approx(c.N / 4)


def test_sparse_constants_are_larger_but_keep_mu():
    w = tiny_sparse()
    dense, sparse = estimate_constants(w), estimate_constants(w, sparse=True)
    assert sparse.mu == dense.mu == w.l2
    assert sparse.L > dense.L  # rare features carry a rescaled penalty λ/p_j
    assert sparse.N > 0 and sparse.D == int(w.x_train.indptr.diff().max()) + 1


def test_feature_frequency_counts_rows():
    w = tiny_sparse()
    p = feature_frequency(w.x_train)
    want = (_dense_x(w) != 0).double().mean(0)
    torch.testing.assert_close(p, want)


def test_refuses_what_has_no_closed_form():
    nonconvex = Workload(
        name="mlp", x_train=torch.zeros(4, 3), y_train=torch.zeros(4, dtype=torch.long),
        x_test=torch.zeros(1, 3), y_test=torch.zeros(1, dtype=torch.long), num_classes=2,
        make_module=lambda: MLP(3, (4,), 2),
    )
    with pytest.raises(ConfigError, match="not convex"):
        estimate_constants(nonconvex)
    with pytest.raises(ConfigError, match=r"Invalid sparse=True .* dense"):
        estimate_constants(dense_binary(), sparse=True)
    with pytest.raises(ConfigError, match="Invalid batch_size"):
        estimate_constants(dense_binary()).noise(0)
    assert np.isfinite(estimate_constants(dense_binary()).N)
