"""The restricted unpickler: NumPy arrays and plain containers in, everything else refused."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from typing import Any

import numpy as np
import pytest

from sgdlab.errors import DataError
from sgdlab.workloads._safe_pickle import safe_load


def load(blob: bytes, encoding: str = "ASCII") -> Any:
    return safe_load(io.BytesIO(blob), source="test.pkl", encoding=encoding)


@pytest.mark.parametrize("protocol", [3, 4])
def test_numpy_arrays_and_containers_round_trip(protocol: int) -> None:
    obj: dict[Any, Any] = {
        b"data": np.arange(24, dtype=np.uint8).reshape(4, 6),
        "x": (np.linspace(0, 1, 5, dtype=np.float32), np.array([3, 1], dtype=np.int64)),
        "labels": [1, 2, 3],
        "meta": {"name": "t", "ok": True, "none": None, "f": 1.5},
    }
    got = load(pickle.dumps(obj, protocol=protocol))
    assert isinstance(got, dict)
    assert np.array_equal(got[b"data"], obj[b"data"]) and got[b"data"].dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(got["x"], obj["x"], strict=True))
    assert got["labels"] == obj["labels"] and got["meta"] == obj["meta"]


def test_the_only_globals_it_resolves_are_the_numpy_array_ones() -> None:
    blob = pickle.dumps(np.zeros((2, 3), dtype=np.float32), protocol=4)
    globals_used = {
        arg for op, arg, _ in pickletools.genops(blob) if op.name == "SHORT_BINUNICODE"
    }
    assert {"numpy._core.multiarray", "_reconstruct", "ndarray", "dtype"} <= globals_used
    assert np.array_equal(load(blob), np.zeros((2, 3), dtype=np.float32))


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "payload",
    [
        _Exploit(),
        os.getcwd,
        print,
        {"ok": np.zeros(2), "bad": (1, [eval])},
        np.float64(1.0),  # a numpy scalar needs numpy._core.multiarray.scalar: not allowed
    ],
)
def test_other_globals_are_refused(payload: object) -> None:
    with pytest.raises(DataError, match=r"test\.pkl: refusing to unpickle global"):
        load(pickle.dumps(payload, protocol=4))


def test_protocol_2_bytes_need_codecs_and_are_refused() -> None:
    # Python 3 pickles bytes under protocol 2 as _codecs.encode(str, "latin1"): a call we do
    # not allow. Files written by Python 2 (MNIST, CIFAR-10) use BINSTRING instead.
    with pytest.raises(DataError, match=r"global _codecs\.encode"):
        load(pickle.dumps(b"abc", protocol=2))


def test_object_arrays_are_refused() -> None:
    blob = pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=4)
    with pytest.raises(DataError, match="object-dtype array"):
        load(blob)


@pytest.mark.parametrize("cut", [1, 10, 40, -2])
def test_truncated_or_garbage_streams_are_data_errors(cut: int) -> None:
    blob = pickle.dumps({"data": np.arange(10)}, protocol=4)
    with pytest.raises(DataError, match=r"test\.pkl"):
        load(blob[:cut])
    with pytest.raises(DataError, match=r"test\.pkl"):
        load(b"\x80\x04not a pickle at all")
