"""The RCV1-like generator: format, the statistics it promises, and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr

from sgdlab.errors import ConfigError
from sgdlab.workloads.sparse import RCV1_N_FEATURES, generate_rcv1like


@pytest.fixture(scope="module")
def rcv1like() -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix, np.ndarray]:
    return generate_rcv1like(8_000, 2_000, seed=0)  # default n_features and avg_nnz


def test_format(rcv1like: tuple) -> None:
    x, y, xt, yt = rcv1like
    assert isinstance(x, sp.csr_matrix) and isinstance(xt, sp.csr_matrix)
    assert x.shape == (8_000, RCV1_N_FEATURES) and xt.shape == (2_000, RCV1_N_FEATURES)
    assert x.dtype == np.float32 and y.dtype == np.int64 and y.shape == (8_000,)
    assert x.has_canonical_format, "sorted column indices, no duplicates"
    assert set(np.unique(y)) == {0, 1} and set(np.unique(yt)) == {0, 1}


def test_rows_are_unit_norm_with_positive_entries(rcv1like: tuple) -> None:
    for m in rcv1like[0], rcv1like[2]:
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        assert np.allclose(norms, 1.0, atol=1e-5)
        assert m.data.min() > 0


def test_density_and_heavy_tailed_rows_like_rcv1(rcv1like: tuple) -> None:
    x = rcv1like[0]
    lengths = np.diff(x.indptr)
    # Target mean 75: the sample mean of 8000 lognormal(sigma=0.8) lengths has sd
    # 75 * sqrt(exp(0.64) - 1) / sqrt(8000) ~ 0.8; +-5 also covers the D(L) interpolation.
    assert abs(lengths.mean() - 75) < 5
    assert 0.0014 < x.nnz / (x.shape[0] * x.shape[1]) < 0.0017  # RCV1: 0.16%
    # LogNormal(sigma = 0.8): q99 / q50 = exp(2.326 * 0.8) = 6.4; a light tail would be ~1.5.
    q50, q99 = np.percentile(lengths, [50, 99])
    assert 4.5 < q99 / q50 < 8.5


def test_feature_popularity_is_zipf_like(rcv1like: tuple) -> None:
    x = rcv1like[0]
    df = np.sort(np.bincount(x.indices, minlength=x.shape[1]))[::-1]
    # Zipf-Mandelbrot (r + 20)^-1.05: the top 1% of ranks carry about ln(492/21)/ln(47256/21)
    # ~ 0.4 of the mass (0.01 if uniform); the top stems sit in roughly a third of the rows.
    top_share = df[: x.shape[1] // 100].sum() / df.sum()
    assert 0.3 < top_share < 0.5
    assert 0.2 < df[0] / x.shape[0] < 0.6
    # log(df) falls about linearly in log(rank) over the middle ranks, slope ~ -1.05.
    ranks = np.arange(200, 5000)
    slope = np.polyfit(np.log(ranks + 20), np.log(df[ranks - 1]), 1)[0]
    assert -1.3 < slope < -0.8


def test_labels_are_balanced(rcv1like: tuple) -> None:
    _, y, _, yt = rcv1like
    # Threshold at the training median: half of each label before noise, which is symmetric.
    assert abs(y.mean() - 0.5) < 0.02 and abs(yt.mean() - 0.5) < 0.04


def test_label_noise_flips_that_fraction_and_nothing_else() -> None:
    x0, y0, _, _ = generate_rcv1like(5_000, 0, n_features=4_000, avg_nnz=30, label_noise=0.0)
    x2, y2, _, _ = generate_rcv1like(5_000, 0, n_features=4_000, avg_nnz=30, label_noise=0.2)
    assert (x0 != x2).nnz == 0, "the noise level does not change the features"
    # Flips are Bernoulli(0.2) per row: sd sqrt(0.16 / 5000) = 0.0057, so 0.2 +- 0.03 is 5 sd.
    assert abs((y0 != y2).mean() - 0.2) < 0.03


def test_labels_come_from_a_sparse_linear_model() -> None:
    x, y, xt, yt = generate_rcv1like(6_000, 2_000, n_features=2_000, avg_nnz=20, label_noise=0.0)
    # A ridge least-squares fit of +-1 labels is a linear classifier; if the labels were not a
    # linear function of x it would sit at chance, 0.5 +- 0.011 (sd over 2000 test rows).
    w = lsqr(x, 2.0 * y - 1.0, damp=1.0)[0]
    assert ((xt @ w > 0) == yt).mean() > 0.7


def test_deterministic_per_seed() -> None:
    a = generate_rcv1like(500, 100, n_features=3_000, avg_nnz=20, seed=5)
    b = generate_rcv1like(500, 100, n_features=3_000, avg_nnz=20, seed=5)
    c = generate_rcv1like(500, 100, n_features=3_000, avg_nnz=20, seed=6)
    assert (a[0] != b[0]).nnz == 0 and np.array_equal(a[1], b[1]) and (a[2] != b[2]).nnz == 0
    assert a[0].shape == c[0].shape and (a[0] != c[0]).nnz > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_samples": 0}, "Invalid n_samples"),
        ({"n_samples": 10.5}, "Invalid n_samples"),
        ({"n_test": -1}, "Invalid n_test"),
        ({"n_features": 4}, "Invalid n_features"),
        ({"avg_nnz": 0.5}, "Invalid avg_nnz"),
        ({"avg_nnz": 10_000.0}, "Invalid avg_nnz"),
        ({"label_noise": 0.5}, "Invalid label_noise"),
        ({"label_noise": -0.1}, "Invalid label_noise"),
        ({"seed": -1}, "Invalid seed"),
        ({"seed": True}, "Invalid seed"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        generate_rcv1like(**{"n_samples": 10, "n_test": 5, **kwargs})
