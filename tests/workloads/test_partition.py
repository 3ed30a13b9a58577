"""Partitioners: exact cover, determinism, and the label skew Dirichlet(α) promises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgdlab.workloads.partition import partition_dirichlet, partition_iid


def assert_exact_cover(parts: list[np.ndarray], n: int, workers: int) -> None:
    assert len(parts) == workers
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert np.all(np.diff(p) > 0), "each part is sorted and has no repeats"
    joined = np.concatenate(parts)
    assert joined.size == n, "no index lost or repeated"
    assert np.array_equal(np.sort(joined), np.arange(n))


def label_skew(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Size-weighted mean total-variation distance of each part's label histogram to the
    whole set's: 0 for identical histograms, close to 1 - 1/C when parts are single-class."""
    classes = np.unique(labels)
    overall = np.array([(labels == c).mean() for c in classes])
    tv = 0.0
    for p in parts:
        hist = np.array([(labels[p] == c).mean() for c in classes])
        tv += p.size * 0.5 * np.abs(hist - overall).sum()
    return tv / labels.size


# --- IID ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 400), seed=st.integers(0, 2**31))
def test_iid_is_an_exact_cover_with_balanced_sizes(data: st.DataObject, n: int, seed: int) -> None:
    workers = data.draw(st.integers(1, n))
    parts = partition_iid(n, workers, seed)
    assert_exact_cover(parts, n, workers)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_deterministic_per_seed_and_random_across_seeds() -> None:
    a, b, c = (partition_iid(1000, 4, s) for s in (3, 3, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # A uniform random subset, not a contiguous block: each part spans the whole range.
    assert all(p.min() < 50 and p.max() > 950 for p in a)


def test_iid_parts_have_the_overall_label_mix() -> None:
    labels = np.repeat(np.arange(10), 5000)
    skew = label_skew(partition_iid(labels.size, 5, seed=0), labels)
    # Per part and class the count is hypergeometric, ~1000 +- 28 (2.8%), so the TV distance
    # is about 0.5 * 10 * 0.1 * 0.028 * 0.8 ~ 0.011; 0.04 leaves more than 3x headroom.
    assert skew < 0.04


# --- Dirichlet -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 300),
    classes=st.integers(1, 6),
    alpha=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**31),
)
def test_dirichlet_is_an_exact_cover_with_no_empty_worker(
    data: st.DataObject, n: int, classes: int, alpha: float, seed: int
) -> None:
    workers = data.draw(st.integers(1, n))
    labels = data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    parts = partition_dirichlet(np.array(labels), workers, alpha, seed)
    assert_exact_cover(parts, n, workers)
    assert min(p.size for p in parts) >= 1


def test_dirichlet_is_deterministic_per_seed() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=3000)
    a, b, c = (partition_dirichlet(labels, 6, 0.5, s) for s in (1, 1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("seed", range(4))
def test_small_alpha_skews_labels_and_large_alpha_does_not(seed: int) -> None:
    labels = np.repeat(np.arange(10), 5000)
    skewed = label_skew(partition_dirichlet(labels, 5, 0.05, seed), labels)
    near_iid = label_skew(partition_dirichlet(labels, 5, 1000.0, seed), labels)
    # alpha = 0.05, W = 5: E[sum_w q_w^2] = (alpha + 1) / (W alpha + 1) = 0.84, so each class
    # lands mostly on one worker; if it all did, a worker would hold ~2 of 10 classes and its
    # TV distance would be 1 - 2/10 = 0.8. 0.4 is half of that.
    assert skewed > 0.4
    # alpha = 1000: sd(q_cw) = sqrt((W - 1) / W^2 / (W alpha + 1)) ~ 0.0057 around 0.2 (2.8%),
    # plus the multinomial's 2.8%: TV ~ 0.5 * 10 * 0.1 * 0.04 * 0.8 ~ 0.016 < 0.05.
    assert near_iid < 0.05


def test_skew_grows_as_alpha_shrinks_on_average() -> None:
    labels = np.repeat(np.arange(10), 2000)
    mean_skew = [
        np.mean([label_skew(partition_dirichlet(labels, 8, a, s), labels) for s in range(5)])
        for a in (100.0, 1.0, 0.01)
    ]
    assert mean_skew[0] < mean_skew[1] < mean_skew[2]


def test_dirichlet_gives_each_worker_a_sample_even_when_alpha_is_tiny() -> None:
    labels = np.zeros(6, dtype=np.int64)  # one class: Dir(1e-4) sends it all to one worker
    parts = partition_dirichlet(labels, 6, 1e-4, seed=0)
    assert [p.size for p in parts] == [1] * 6


def test_dirichlet_accepts_arbitrary_integer_label_values() -> None:
    labels = np.array([7, -3, 7, 100, -3, 100, 7, 7], dtype=np.int32)
    assert_exact_cover(partition_dirichlet(labels, 3, 1.0, seed=0), labels.size, 3)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 10, "workers": 0, "seed": 0}, "Invalid workers"),
        ({"n": 10, "workers": -2, "seed": 0}, "Invalid workers"),
        ({"n": 10, "workers": 2.0, "seed": 0}, "Invalid workers"),
        ({"n": 10, "workers": True, "seed": 0}, "Invalid workers"),
        ({"n": 3, "workers": 4, "seed": 0}, "more than the 3 samples"),
        ({"n": 0, "workers": 1, "seed": 0}, "Invalid n"),
        ({"n": 10, "workers": 2, "seed": -1}, "Invalid seed"),
    ],
)
def test_iid_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        partition_iid(**kwargs)


@pytest.mark.parametrize(
    ("labels", "workers", "alpha", "message"),
    [
        (np.arange(10), 0, 1.0, "Invalid workers"),
        (np.arange(10), 11, 1.0, "more than the 10 samples"),
        (np.arange(10), 2, 0.0, "Invalid alpha"),
        (np.arange(10), 2, -1.0, "Invalid alpha"),
        (np.arange(10), 2, float("nan"), "Invalid alpha"),
        (np.arange(10), 2, float("inf"), "Invalid alpha"),
        (np.arange(10.0), 2, 1.0, "Invalid labels"),
        (np.zeros((5, 2), dtype=int), 2, 1.0, "Invalid labels"),
        (np.array([], dtype=int), 1, 1.0, "Invalid labels"),
    ],
)
def test_dirichlet_rejects_bad_input(
    labels: np.ndarray, workers: int, alpha: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        partition_dirichlet(labels, workers, alpha, seed=0)
