# TEMPORARY SHIM (not committed): replaced by the data helper's module on merge.
from __future__ import annotations
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any
import numpy as np

@dataclass(frozen=True)
class ArrayDataset:
    name: str
    x_train: Any
    y_train: np.ndarray
    x_test: Any
    y_test: np.ndarray
    num_classes: int

def _idx(p):
    b = gzip.open(p).read(); nd = b[3]; dims = [int.from_bytes(b[4+4*i:8+4*i],'big') for i in range(nd)]
    return np.frombuffer(b, np.uint8, offset=4+4*nd).reshape(dims)

def load_dataset(name: str, *, cache_dir: Path | None = None, **options: Any) -> ArrayDataset:
    if name == "breast-cancer":
        from sklearn.datasets import load_breast_cancer
        from sklearn.model_selection import train_test_split
        X, y = load_breast_cancer(return_X_y=True)
        a, b, c, d = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
        m, s = a.mean(0), a.std(0)
        return ArrayDataset(name, ((a-m)/s).astype(np.float32), c, ((b-m)/s).astype(np.float32), d, 2)
    if name == "fashion-mnist":
        d='/usr/share/datasets/fashion-mnist/'
        X=_idx(d+'train-images-idx3-ubyte.gz').reshape(-1,1,28,28).astype(np.float32)/255
        Y=_idx(d+'train-labels-idx1-ubyte.gz').astype(np.int64)
        Xt=_idx(d+'t10k-images-idx3-ubyte.gz').reshape(-1,1,28,28).astype(np.float32)/255
        Yt=_idx(d+'t10k-labels-idx1-ubyte.gz').astype(np.int64)
        return ArrayDataset(name, X, Y, Xt, Yt, 10)
    raise KeyError(name)
