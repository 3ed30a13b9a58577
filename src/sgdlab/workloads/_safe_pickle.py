"""A restricted unpickler for the two pickled data sets sgdlab reads (MNIST, CIFAR-10).

``pickle.load`` on an untrusted file runs arbitrary code: every ``GLOBAL``/``STACK_GLOBAL``
opcode imports a name and a following ``REDUCE`` calls it. Both files we read hold only plain
containers (tuple, list, dict, bytes, str, int, None, bool; opcodes that need no global) and
NumPy arrays. A pickled array needs exactly three globals::

    _reconstruct(ndarray, (0,), b"b")   # an empty array of the right subclass
    dtype("u1", False, True)            # its dtype, then dtype.__setstate__
    array.__setstate__((1, shape, dtype, fortran, raw_bytes))

so :class:`RestrictedUnpickler` resolves those names (under the NumPy 1 module path
``numpy.core.multiarray`` and the NumPy 2 path ``numpy._core.multiarray``, which files pickled
by either version carry) and refuses every other global with :class:`~sgdlab.errors.DataError`.
``find_class`` is the only door through which a pickle reaches code, so with it closed the
worst a hostile file can do is build large containers or raise.

The object-array case is refused too: an array of ``dtype=object`` would be rebuilt from a
nested pickle, so :func:`safe_load` rejects any returned array whose dtype holds objects.

>>> import io, pickle
>>> import numpy as np
>>> blob = pickle.dumps({b"data": np.arange(4, dtype=np.uint8), b"labels": [0, 1]}, protocol=4)
>>> safe_load(io.BytesIO(blob), source="example")[b"data"].tolist()
[0, 1, 2, 3]
>>> import os
>>> safe_load(io.BytesIO(pickle.dumps(os.getcwd, protocol=4)), source="evil.pkl")
Traceback (most recent call last):
...
sgdlab.errors.DataError: evil.pkl: refusing to unpickle global posix.getcwd (only numpy arrays \
and plain containers are allowed)
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from sgdlab.errors import DataError

try:  # NumPy >= 2: the real home; importing ``numpy.core`` there only warns.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class Readable(Protocol):
    """What :class:`pickle.Unpickler` reads from: a binary file, ``io.BytesIO``, ``GzipFile``."""

    def read(self, n: int, /) -> bytes: ...

    def readline(self) -> bytes: ...


class RestrictedUnpickler(pickle.Unpickler):
    """An :class:`pickle.Unpickler` that resolves only the NumPy array globals.

    ``source`` names the file in error messages; ``encoding`` is passed on as ``pickle.load``
    does ("latin1" reads NumPy arrays pickled by Python 2 as arrays; "bytes" keeps Python 2
    ``str`` values as ``bytes``, which the CIFAR-10 dictionaries use for their keys).
    """

    def __init__(self, file: Readable, *, source: str, encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refusing to unpickle global {module}.{name} "
                "(only numpy arrays and plain containers are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self._source}: refusing persistent id {pid!r} in pickle")


def safe_load(file: Readable, *, source: str, encoding: str = "ASCII") -> Any:
    """Unpickle ``file`` with :class:`RestrictedUnpickler`; any failure is a ``DataError``.

    A truncated stream, a bad opcode or a refused global all become one
    ``DataError("<source>: ...")``; so does an object-dtype array anywhere at the top two
    levels of the result (the shapes MNIST and CIFAR-10 use).
    """
    try:
        obj = RestrictedUnpickler(file, source=source, encoding=encoding).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError, MemoryError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    _reject_object_arrays(obj, source, depth=2)
    return obj


def _reject_object_arrays(obj: Any, source: str, depth: int) -> None:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise DataError(f"{source}: refusing an object-dtype array in pickle")
        return
    if depth == 0:
        return
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, tuple | list) else ()
    for item in items:
        _reject_object_arrays(item, source, depth - 1)
