r"""The constants μ, L and N of a convex workload, estimated from its data at the optimum.

The SGD bounds of Nguyen et al. (ICML 2018, see ``sgdlab.theory.sgd_bounds``) need three
numbers: the strong convexity μ of :math:`F = \frac1n\sum_i f_i`, a smoothness constant L of
every component :math:`f_i`, and the gradient noise at the optimum
:math:`N = 2\,\mathbb E_i\|\nabla f_i(\theta^*)\|^2`. For the L2-regularised linear workloads
(logits :math:`z_i = W x_i + b`, :math:`\tilde x_i = (x_i, 1)`, :math:`\theta = (W, b)`) all three
have closed forms.

**Dense components** :math:`f_i(\theta) = \ell(z_i, y_i) + \frac\lambda2\|\theta\|^2`. With the
residual :math:`r_i = p_i - \mathrm{onehot}(y_i)` (softmax) or :math:`r_i = \sigma(z_i) - y_i`
(one logit), :math:`\nabla f_i(\theta) = r_i \tilde x_i^\top + \lambda\theta`, so

.. math::

    \|\nabla f_i(\theta)\|^2 = \|r_i\|^2\|\tilde x_i\|^2 + 2\lambda\, r_i^\top z_i
        + \lambda^2\|\theta\|^2,

since :math:`\langle r_i\tilde x_i^\top, \theta\rangle = r_i^\top(W x_i + b) = r_i^\top z_i`.
μ = λ, and L = c·max‖x̃_i‖² + λ (c = 1/4 or 1/2, see ``sgdlab.workloads.convex``).

**Sparse components** (``sparse=True``, what Hogwild! runs on ``sparse-logreg``). A step must
write only the coordinates of its sample's support :math:`S_i` (the nonzero features and the
bias), but :math:`\lambda\theta` is dense. Following Niu et al. (2011) the regulariser is spread
over the components that touch each coordinate: with :math:`p_j` the fraction of training
rows whose support holds :math:`j` (:math:`p_{\text{bias}} = 1`),

.. math::

    f_i(\theta) = \ell(z_i, y_i) + \frac\lambda2 \sum_{j \in S_i} \frac{\theta_j^2}{p_j},
    \qquad \frac1n\sum_i \sum_{j\in S_i} \frac{\theta_j^2}{p_j}
        = \sum_j \theta_j^2 \frac{|\{i: j \in S_i\}|}{n\,p_j} = \|\theta\|^2,

so :math:`F` is unchanged on every coordinate some row touches (a coordinate no row touches has
:math:`\theta^*_j = 0` and no component moves it; Hogwild! starts it at 0). Now
:math:`\nabla f_i(\theta) = r_i\tilde x_i + \lambda(\theta_j/p_j)_{j\in S_i}` lives on
:math:`S_i`, and

.. math::

    \|\nabla f_i(\theta)\|^2 = r_i^2\|\tilde x_i\|^2
        + 2\lambda r_i \sum_{j\in S_i} \tilde x_{ij}\theta_j/p_j
        + \lambda^2 \sum_{j\in S_i} \theta_j^2/p_j^2 .

The Hessian of :math:`f_i` is :math:`\sigma'(z_i)\tilde x_i\tilde x_i^\top
+ \lambda\,\mathrm{diag}(1/p_j)_{S_i}`, so each component is L-smooth with
:math:`L = \max_i \bigl(\tfrac14\|\tilde x_i\|^2 + \lambda \max_{j\in S_i} 1/p_j\bigr)`: rare
features pay for their rescaled penalty with a larger L (a smaller admissible step). μ = λ
still. Since the update writes the whole support, its direction is the exact gradient of the
rescaled :math:`f_i`: the sequential bound applies with these L and N and D = 1 (D > 1 is for
updates that write one sampled coordinate, scaled by the support size).

**Mini-batches.** The mean of b components drawn independently is again convex and L-smooth,
and its gradient at θ* has second moment :math:`\mathbb E\|\nabla f_i(\theta^*)\|^2/b` (the
gradients at θ* have mean 0): use :meth:`ProblemConstants.noise` with ``batch_size``.

>>> from sgdlab.workloads import get_workload
>>> c = estimate_constants(get_workload("logreg-breast-cancer"))
>>> c.mu, c.L > c.mu > 0, c.N > 0, c.D
(0.01, True, True, 31)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sgdlab.errors import ConfigError
from sgdlab.workloads.base import SparseRows, Workload
from sgdlab.workloads.models import LinearClassifier


@dataclass(frozen=True)
class ProblemConstants:
    """μ, an upper bound L on every component's smoothness, N = 2E‖∇f_i(θ*)‖², and more.

    ``D`` is the largest support of a component (features with a nonzero plus the bias);
    ``grad_sq`` the mean ``E‖∇f_i(θ*)‖²``; ``loss`` is F(θ*); ``sparse`` says which
    decomposition of F the constants belong to (module docstring).
    """

    mu: float
    L: float
    N: float
    D: int
    grad_sq: float
    loss: float
    sparse: bool
    samples: int

    def noise(self, batch_size: int = 1) -> float:
        """N of a mean over ``batch_size`` independently drawn components: N / batch_size."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"Invalid batch_size: {batch_size} (an integer >= 1)")
        return self.N / batch_size


def feature_frequency(x: SparseRows) -> torch.Tensor:
    """``p_j``: the fraction of rows of ``x`` whose support holds feature ``j`` (float64).

    >>> import scipy.sparse as sp
    >>> rows = SparseRows(sp.csr_matrix(np.array([[1.0, 0, 2], [0, 0, 3]])))
    >>> feature_frequency(rows).tolist()
    [0.5, 0.0, 1.0]
    """
    counts = torch.bincount(x.indices, minlength=x.shape[1]).double()
    return counts / len(x)


def estimate_constants(workload: Workload, sparse: bool = False) -> ProblemConstants:
    """μ, L and N of a linear workload (module docstring), N from the data at θ*.

    ``sparse=True`` takes the support-only decomposition of the regulariser that Hogwild!'s
    sparse updates run on; it needs :class:`SparseRows` data. θ* comes from
    :meth:`Workload.optimum` (computed once and cached).
    """
    _check_linear(workload)
    if sparse and not isinstance(workload.x_train, SparseRows):
        raise ConfigError(
            f"Invalid sparse=True for workload {workload.name!r}: its data are dense"
        )
    opt = workload.optimum()
    weight, bias = (torch.from_numpy(np.asarray(p, dtype=np.float64)) for p in opt.params)
    sq = per_sample_grad_sq(workload, weight, bias, sparse=sparse)
    grad_sq = float(sq.mean())
    return ProblemConstants(
        mu=float(workload.l2),
        L=smoothness(workload, sparse=sparse),
        N=2.0 * grad_sq,
        D=max_support(workload.x_train),
        grad_sq=grad_sq,
        loss=float(opt.loss),
        sparse=sparse,
        samples=workload.num_train,
    )


def max_support(x: torch.Tensor | SparseRows) -> int:
    """The largest number of coordinates one component touches: nonzero features + the bias."""
    if isinstance(x, SparseRows):
        return int(x.indptr.diff().max()) + 1
    return int(x.flatten(1).ne(0).sum(1).max()) + 1


def smoothness(workload: Workload, sparse: bool = False) -> float:
    """L of every component: ``c max‖x̃_i‖² + λ`` (dense) or the sparse form (module docstring)."""
    _check_linear(workload)
    if not sparse:
        if workload.L is None:
            raise ConfigError(f"workload {workload.name!r} declares no smoothness constant L")
        return float(workload.L)
    x = workload.x_train
    if not isinstance(x, SparseRows):
        raise ConfigError(f"Invalid sparse=True for workload {workload.name!r}: its data are dense")
    inv_p = _inverse_frequency(x)
    rows = torch.repeat_interleave(torch.arange(len(x)), x.indptr.diff())
    # The bias sits in every support with p = 1: the per-row maximum of 1/p_j is at least 1.
    worst = torch.ones(len(x), dtype=torch.float64).scatter_reduce(
        0, rows, inv_p[x.indices], reduce="amax"
    )
    norms = x.row_norms_sq().double() + 1.0
    return float((0.25 * norms + workload.l2 * worst).max())


def per_sample_grad_sq(
    workload: Workload, weight: torch.Tensor, bias: torch.Tensor, sparse: bool = False
) -> torch.Tensor:
    """``‖∇f_i(θ)‖²`` for every training sample at ``θ = (weight, bias)``, in float64.

    The closed forms of the module docstring; checked against autograd in the tests.
    """
    _check_linear(workload)
    lam = float(workload.l2)
    w = weight.double().reshape(-1, weight.shape[-1])  # (classes or 1, features)
    b = bias.double().reshape(-1)
    x = workload.x_train
    y = workload.y_train
    out: list[torch.Tensor] = []
    inv_p = _inverse_frequency(x) if sparse and isinstance(x, SparseRows) else None
    chunk = 8192
    for start in range(0, len(y), chunk):
        idx = torch.arange(start, min(start + chunk, len(y)))
        if isinstance(x, SparseRows):
            xb = x.take(idx).double()
            z = torch.sparse.mm(xb, w.t()) + b
            x_sq = torch.sparse.sum(xb * xb, 1).to_dense() + 1.0
        else:
            xb = x[idx].flatten(1).double()
            z = xb @ w.t() + b
            x_sq = xb.pow(2).sum(1) + 1.0
        r = _residual(z, y[idx], workload.num_classes)
        if inv_p is None:
            sq = r.pow(2).sum(1) * x_sq + 2 * lam * (r * z).sum(1) + lam**2 * (
                w.pow(2).sum() + b.pow(2).sum()
            )
        else:
            assert isinstance(x, SparseRows)  # for mypy: inv_p is only set for sparse rows
            sq = _sparse_grad_sq(x, idx, r[:, 0], x_sq, w[0], float(b[0]), inv_p, lam)
        out.append(sq)
    return torch.cat(out)


def _sparse_grad_sq(
    x: SparseRows,
    idx: torch.Tensor,
    r: torch.Tensor,
    x_sq: torch.Tensor,
    w: torch.Tensor,
    b: float,
    inv_p: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    starts, ends = x.indptr[idx[0]], x.indptr[idx[-1] + 1]
    cols = x.indices[starts:ends]
    vals = x.data[starts:ends].double()
    rows = torch.repeat_interleave(torch.arange(len(idx)), x.indptr[idx + 1] - x.indptr[idx])
    scaled = w[cols] * inv_p[cols]  # θ_j / p_j on the support
    cross = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, rows, vals * scaled) + b
    reg = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, rows, scaled.pow(2)) + b * b
    return r.pow(2) * x_sq + 2 * lam * r * cross + lam**2 * reg


def _residual(z: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """∂ℓ/∂z: ``σ(z) - y`` (one logit) or ``softmax(z) - onehot(y)``, shape (batch, outputs)."""
    if num_classes == 2:
        return torch.sigmoid(z) - y.double().unsqueeze(1)
    return torch.softmax(z, 1) - torch.nn.functional.one_hot(y, num_classes).double()


def _inverse_frequency(x: torch.Tensor | SparseRows) -> torch.Tensor:
    if not isinstance(x, SparseRows):
        raise ConfigError("the sparse decomposition needs sparse rows")
    p = feature_frequency(x)
    return torch.where(p > 0, 1.0 / p.clamp_min(1e-300), torch.zeros_like(p))


def _check_linear(workload: Workload) -> None:
    if not workload.convex:
        raise ConfigError(
            f"workload {workload.name!r} is not convex: it has no constants mu, L, N"
        )
    if not isinstance(workload.make_model(0), LinearClassifier):
        raise ConfigError(
            f"workload {workload.name!r}: the closed forms need a linear model (LinearClassifier)"
        )


__all__ = [
    "ProblemConstants",
    "estimate_constants",
    "feature_frequency",
    "max_support",
    "per_sample_grad_sq",
    "smoothness",
]
