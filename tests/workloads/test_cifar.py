"""CIFAR-10 on small archives in the official format, built here byte for byte.

The official batches were pickled by Python 2 + NumPy: keys are ``str`` (BINSTRING opcodes,
bytes under ``encoding="bytes"``) and the data array is rebuilt through
``numpy.core.multiarray._reconstruct``. Python 3 cannot write BINSTRING, so
:func:`py2_pickle` emits those opcodes itself; the standard unpickler is the oracle that the
stream is well formed.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sgdlab.errors import ConfigError, DataError
from sgdlab.workloads import _cifar
from sgdlab.workloads.datasets import load_dataset

# --- a Python 2 style pickler for dict / list / bytes / int / uint8 ndarray --------------------


def _string(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _int(i: int) -> bytes:
    return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def _ndarray(a: np.ndarray) -> bytes:
    assert a.dtype == np.uint8
    out = b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\n" + _int(0)
    out += b"\x85" + _string(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
    out += b"(" + _int(1) + b"(" + b"".join(_int(d) for d in a.shape) + b"t"
    out += b"cnumpy\ndtype\n" + _string(b"u1") + _int(0) + _int(1) + b"\x87R"
    out += b"(" + _int(3) + _string(b"|") + b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb"
    return out + b"\x89" + _string(a.tobytes()) + b"tb"  # (1, shape, dtype, False, raw)


def _value(v: object) -> bytes:
    if isinstance(v, bytes):
        return _string(v)
    if isinstance(v, int):
        return _int(v)
    if isinstance(v, np.ndarray):
        return _ndarray(v)
    if isinstance(v, list):
        return b"](" + b"".join(_value(x) for x in v) + b"e"
    if isinstance(v, dict):
        return b"}(" + b"".join(_value(k) + _value(x) for k, x in v.items()) + b"u"
    raise TypeError(type(v))


def py2_pickle(obj: object) -> bytes:
    return b"\x80\x02" + _value(obj) + b"."


# --- archive builder -------------------------------------------------------------------------


def make_batches(
    n_train_batches: int = 2, per_batch: int = 20, seed: int = 0
) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, n_train_batches + 1)] + ["test_batch"]
    return {
        name: (
            rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            [int(v) for v in rng.integers(0, 10, size=per_batch)],
        )
        for name in names
    }


def batch_blob(name: str, data: np.ndarray, labels: list[int]) -> bytes:
    return py2_pickle(
        {
            b"batch_label": f"{name} of 2".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
        }
    )


def write_archive(path: Path, blobs: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in {"batches.meta": py2_pickle({b"label_names": [b"cat"]}), **blobs}.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


@pytest.fixture
def batches() -> dict[str, tuple[np.ndarray, list[int]]]:
    return make_batches()


@pytest.fixture
def archive(tmp_path: Path, batches: dict) -> Path:
    blobs = {name: batch_blob(name, *b) for name, b in batches.items()}
    return write_archive(tmp_path / "cifar-10-python.tar.gz", blobs)


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SGDLAB_DATA", raising=False)


def expected_images(data: np.ndarray) -> np.ndarray:
    """Pixel (c, h, w) of image i is byte i, c*1024 + h*32 + w, over 255 (the CIFAR layout)."""
    n = data.shape[0]
    out = np.empty((n, 3, 32, 32), dtype=np.float32)
    for c in range(3):
        for h in range(32):
            out[:, c, h, :] = data[:, c * 1024 + h * 32 : c * 1024 + h * 32 + 32] / 255.0
    return out


def assert_matches(ds, batches: dict) -> None:
    train = [batches[k] for k in sorted(batches) if k.startswith("data_batch")]
    assert ds.x_train.shape == (40, 3, 32, 32) and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 10
    assert np.allclose(ds.x_train, expected_images(np.concatenate([d for d, _ in train])))
    assert ds.y_train.tolist() == sum((labels for _, labels in train), [])
    assert np.allclose(ds.x_test, expected_images(batches["test_batch"][0]))
    assert ds.y_test.tolist() == batches["test_batch"][1]


# --- tests -----------------------------------------------------------------------------------


def test_the_py2_fixture_is_a_valid_pickle(batches: dict) -> None:
    data, labels = batches["test_batch"]
    got = pickle.loads(batch_blob("test_batch", data, labels), encoding="bytes")
    assert got[b"labels"] == labels and np.array_equal(got[b"data"], data)


def test_archive_path_loads_the_exact_pixels(tmp_path: Path, archive: Path, batches: dict) -> None:
    ds = load_dataset("cifar10", cache_dir=tmp_path / "cache", path=archive)
    assert_matches(ds, batches)
    assert ds.source == str(archive) and ds.feature_shape == (3, 32, 32)


def test_folder_layouts_and_env_var(
    tmp_path: Path, archive: Path, batches: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    assert_matches(load_dataset("cifar10", cache_dir=cache, path=archive.parent), batches)
    extracted = tmp_path / "extracted"
    with tarfile.open(archive) as tar:
        tar.extractall(extracted, filter="data")
    assert_matches(load_dataset("cifar10", cache_dir=cache, path=extracted), batches)
    inner = extracted / "cifar-10-batches-py"
    assert_matches(load_dataset("cifar10", cache_dir=cache, path=inner), batches)
    monkeypatch.setenv("SGDLAB_DATA", str(extracted))
    assert_matches(load_dataset("cifar10", cache_dir=cache), batches)


def test_missing_data_says_how_to_provide_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"path=.*SGDLAB_DATA"):
        load_dataset("cifar10", cache_dir=tmp_path)
    with pytest.raises(DataError, match="no cifar-10-python.tar.gz"):
        load_dataset("cifar10", cache_dir=tmp_path, path=tmp_path / "nowhere")


def test_user_checksum_is_checked_before_unpacking(tmp_path: Path, archive: Path) -> None:
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    load_dataset("cifar10", cache_dir=tmp_path / "a", path=archive, sha256=good)
    bad = "0" * 64
    with pytest.raises(DataError, match="SHA-256 .* does not match expected 0000"):
        load_dataset("cifar10", cache_dir=tmp_path / "b", path=archive, sha256=bad)
    assert not list((tmp_path / "b").glob("cifar10-*/manifest.json"))


def test_an_archive_of_the_official_size_must_have_the_official_digest(
    tmp_path: Path, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_cifar, "OFFICIAL_SIZE", archive.stat().st_size)
    with pytest.raises(DataError, match=f"expected {_cifar.OFFICIAL_SHA256}"):
        load_dataset("cifar10", cache_dir=tmp_path, path=archive)


def test_url_download_is_verified_and_kept(tmp_path: Path, archive: Path, batches: dict) -> None:
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    url = archive.as_uri()
    with pytest.raises(DataError, match="does not match expected"):  # default: official digest
        load_dataset("cifar10", cache_dir=cache, url=url)
    assert not list((cache / "downloads").iterdir()), "a failed download leaves nothing behind"
    assert_matches(load_dataset("cifar10", cache_dir=cache, url=url, sha256=good), batches)
    assert (cache / "downloads" / archive.name).read_bytes() == archive.read_bytes()
    with pytest.raises(DataError, match="download failed"):
        load_dataset("cifar10", cache_dir=tmp_path / "c", url=url + ".missing", sha256=good)


def test_a_malicious_batch_is_refused(tmp_path: Path, batches: dict) -> None:
    blobs = {name: batch_blob(name, *b) for name, b in batches.items()}
    blobs["data_batch_2"] = b"\x80\x02cposix\nsystem\nU\x04trueR."  # os.system("true")
    path = write_archive(tmp_path / "evil.tar.gz", blobs)
    with pytest.raises(DataError, match=r"data_batch_2: refusing to unpickle global posix\.system"):
        load_dataset("cifar10", cache_dir=tmp_path, path=path)


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (["data_batch_1", "data_batch_3", "test_batch"], "have a gap"),
        (["data_batch_1"], "needs cifar-10-batches-py/data_batch_1 and test_batch"),
        (["test_batch"], "needs cifar-10-batches-py/data_batch_1 and test_batch"),
    ],
)
def test_missing_batches_are_data_errors(tmp_path: Path, keep: list[str], message: str) -> None:
    batches = make_batches(3, 4)
    blobs = {name: batch_blob(name, *batches[name]) for name in keep}
    with pytest.raises(DataError, match=message):
        load_dataset("cifar10", cache_dir=tmp_path, path=write_archive(tmp_path / "a.tgz", blobs))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [1]}, "b'labels' is not"),
        ({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [1, 10]}, "b'labels' is not"),
        ({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [1, 2]}, "b'data' is not"),
        ({b"labels": [1, 2]}, "b'data' is not"),
        ([1, 2], "expected a pickled dict"),
    ],
)
def test_malformed_batches_are_data_errors(tmp_path: Path, content: object, message: str) -> None:
    blobs = {name: batch_blob(name, *b) for name, b in make_batches(1, 2).items()}
    blobs["test_batch"] = py2_pickle(content)
    with pytest.raises(DataError, match=message):
        load_dataset("cifar10", cache_dir=tmp_path, path=write_archive(tmp_path / "a.tgz", blobs))


def test_truncated_archive_is_a_data_error(tmp_path: Path, archive: Path) -> None:
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.tar\.gz: not a readable"):
        load_dataset("cifar10", cache_dir=tmp_path, path=cut)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"path": "a.tgz", "url": "file:///a.tgz"}, "not both"),
        ({"path": "a.tgz", "sha256": "xyz"}, "Invalid sha256"),
        ({"url": 3}, "Invalid url"),
        ({"path": 3}, "Invalid path"),
    ],
)
def test_bad_options_are_config_errors(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_dataset("cifar10", cache_dir=tmp_path, **options)


def test_sha256_does_not_apply_to_a_folder(tmp_path: Path, archive: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    with pytest.raises(ConfigError, match="is a folder"):
        load_dataset("cifar10", cache_dir=tmp_path, path=tmp_path / "x", sha256="0" * 64)
