"""CIFAR-10 from the standard python archive, read without extracting it and unpickled safely.

The archive ``cifar-10-python.tar.gz`` (Krizhevsky, 2009) holds ``cifar-10-batches-py/``
with ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``. Each is a Python 2 pickle of a
dict with ``b"data"``, a uint8 array of shape (n, 3072) (the 1024 red, then green, then blue
values of a 32x32 image, row-major), and ``b"labels"``, a list of n ints in 0..9. We read the
members straight from the tar stream (nothing is written to disk, so member names cannot
escape a folder), unpickle them with :mod:`sgdlab.workloads._safe_pickle` and reshape to
(n, 3, 32, 32) float32 in [0, 1].

Checksums: with ``sha256=`` the file must match it; without, an archive of exactly the
official size must match the official SHA-256 (a same-size file that differs is corrupt); a
smaller file in the same format (a test fixture, a subset) is read on its structure alone.
A download (``url=``) is always checked, against ``sha256=`` or the official digest, before
anything is unpacked.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from sgdlab.errors import ConfigError, DataError
from sgdlab.workloads._safe_pickle import safe_load

OFFICIAL_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
OFFICIAL_SIZE = 170_498_071
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")

Decoder = Callable[[], dict[str, Any]]


def resolve(
    path: Any, url: Any, sha256: Any, download_dir: Path, env_roots: list[Path]
) -> tuple[str, str, Decoder]:
    """Locate CIFAR-10 cheaply: ``(source, fingerprint, decode)``; ``decode()`` does the work."""
    if path is not None and url is not None:
        raise ConfigError("Invalid cifar10 options: give path= or url=, not both")
    if sha256 is not None and not (
        isinstance(sha256, str) and len(sha256) == 64 and set(sha256) <= set("0123456789abcdef")
    ):
        raise ConfigError(f"Invalid sha256: {sha256!r} (need 64 lowercase hex digits)")
    if url is not None:
        if not isinstance(url, str):
            raise ConfigError(f"Invalid url: {url!r}")
        digest = sha256 or OFFICIAL_SHA256
        return url, f"sha256:{digest}", partial(_download_and_read, url, digest, download_dir)
    if path is not None and not isinstance(path, str | os.PathLike):
        raise ConfigError(f"Invalid path: {path!r}")
    roots = [Path(path)] if path is not None else env_roots
    for root in roots:
        found = _locate(root)
        if found is None:
            continue
        kind, where = found
        if kind == "folder":
            if sha256 is not None:
                raise ConfigError(f"Invalid sha256: it checks an archive, but {where} is a folder")
            files = [where / b for b in BATCHES if (where / b).is_file()]
            return str(where), _stat_fingerprint(files), partial(read_folder, where)
        expected = sha256 or (OFFICIAL_SHA256 if where.stat().st_size == OFFICIAL_SIZE else None)
        fingerprint = f"{_stat_fingerprint([where])}:{expected}"
        return str(where), fingerprint, partial(read_archive, where, expected)
    if path is not None:
        raise DataError(f"{path}: no {ARCHIVE_NAME} or {FOLDER_NAME}/ there")
    raise DataError(
        f"CIFAR-10 not found: pass path= (the {ARCHIVE_NAME} archive or its extracted "
        f"{FOLDER_NAME}/ folder), or url= with sha256=, or set SGDLAB_DATA to a folder holding it"
    )


def _download_and_read(url: str, digest: str, download_dir: Path) -> dict[str, Any]:
    return read_archive(download(url, digest, download_dir))


def _locate(root: Path) -> tuple[str, Path] | None:
    if root.is_file():
        return "archive", root
    if (root / ARCHIVE_NAME).is_file():
        return "archive", root / ARCHIVE_NAME
    if (root / FOLDER_NAME).is_dir():
        return "folder", root / FOLDER_NAME
    if (root / "test_batch").is_file():
        return "folder", root
    return None


def _stat_fingerprint(paths: list[Path]) -> str:
    text = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, expected: str, download_dir: Path) -> Path:
    """Fetch ``url`` into ``download_dir`` unless a file there already has SHA-256 ``expected``.

    The bytes are hashed as they arrive and the file is renamed into place only if the digest
    matches, so a partial or tampered download never lands under its final name.
    """
    target = download_dir / (Path(urllib.parse.urlparse(url).path).name or ARCHIVE_NAME)
    if target.is_file() and sha256_file(target) == expected:
        return target
    try:
        download_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=download_dir, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise DataError(f"{download_dir}: cannot write the download ({exc})") from exc
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != expected:
            raise DataError(f"{url}: SHA-256 {h.hexdigest()} does not match expected {expected}")
        os.replace(tmp, target)
    except (OSError, ValueError) as exc:  # URLError is an OSError; a bad URL a ValueError
        raise DataError(f"{url}: download failed ({exc})") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def read_archive(path: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """The four arrays of a ``cifar-10-python.tar.gz``-format archive (checksum first)."""
    if expected_sha256 is not None:
        digest = sha256_file(path)
        if digest != expected_sha256:
            raise DataError(f"{path}: SHA-256 {digest} does not match expected {expected_sha256}")
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # one sequential pass: seeking back in a gzip stream re-reads it
                folder, _, base = member.name.removeprefix("./").rpartition("/")
                if folder == FOLDER_NAME and base in BATCHES and member.isfile():
                    f = tar.extractfile(member)
                    if f is not None:
                        blobs[base] = f.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable .tar.gz archive ({exc})") from exc
    return _assemble(blobs, str(path))


def read_folder(folder: Path) -> dict[str, Any]:
    """The four arrays from an extracted ``cifar-10-batches-py`` folder."""
    blobs = {b: (folder / b).read_bytes() for b in BATCHES if (folder / b).is_file()}
    return _assemble(blobs, str(folder))


def _assemble(blobs: dict[str, bytes], where: str) -> dict[str, Any]:
    train = [b for b in BATCHES[:-1] if b in blobs]
    if "test_batch" not in blobs or not train:
        raise DataError(f"{where}: CIFAR-10 needs {FOLDER_NAME}/data_batch_1 and test_batch")
    if train != list(BATCHES[: len(train)]):
        raise DataError(f"{where}: CIFAR-10 training batches have a gap: found {', '.join(train)}")
    x_train, y_train = zip(*(_parse_batch(blobs[b], f"{where}:{b}") for b in train), strict=True)
    x_test, y_test = _parse_batch(blobs["test_batch"], f"{where}:test_batch")
    return {
        "x_train": _to_images(np.concatenate(x_train)),
        "y_train": np.concatenate(y_train),
        "x_test": _to_images(x_test),
        "y_test": y_test,
    }


def _to_images(data: np.ndarray) -> np.ndarray:
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)


def _parse_batch(blob: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    # Python 2 pickled these dicts: "bytes" keeps their str keys as bytes (b"data", b"labels").
    batch = safe_load(io.BytesIO(blob), source=source, encoding="bytes")
    if not isinstance(batch, dict):
        raise DataError(f"{source}: expected a pickled dict, found {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
        and data.shape[0] > 0 and data.shape[1] == 3072
    ):
        raise DataError(f"{source}: b'data' is not a uint8 array of shape (n, 3072)")
    y = np.asarray(labels) if isinstance(labels, list | np.ndarray) else np.zeros(0)
    if y.shape != (data.shape[0],) or y.dtype.kind not in "iu" or y.min() < 0 or y.max() > 9:
        raise DataError(f"{source}: b'labels' is not a list of {data.shape[0]} ints in 0..9")
    return data, y.astype(np.int64)
