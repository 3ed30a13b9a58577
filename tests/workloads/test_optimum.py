"""θ* by preconditioned trust-region Newton: the tolerance by autograd, the L-BFGS oracle, the
status line, the cache."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sgdlab.errors import SolverError
from sgdlab.workloads import convex
from sgdlab.workloads.base import SparseRows, Workload
from sgdlab.workloads.convex import (
    Optimum,
    autograd_check,
    cached_optimum,
    compute_optimum,
    compute_optimum_lbfgs,
)
from sgdlab.workloads.registry import linear_workload
from sgdlab.workloads.sparse import generate_rcv1like


def _workload(x: torch.Tensor | SparseRows, y: torch.Tensor, classes: int, l2: float) -> Workload:
    return linear_workload("tiny", x, y, x, y, classes, l2)


def dense_softmax(l2: float = 1e-3) -> Workload:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 12, generator=g) * torch.linspace(0.1, 3.0, 12)  # uneven scales
    y = torch.randint(0, 4, (300,), generator=g)
    return _workload(x, y, 4, l2)


def dense_binary(l2: float = 1e-3) -> Workload:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 8, generator=g) * 2
    y = (x[:, 0] + 0.3 * torch.randn(300, generator=g) > 0).long()
    return _workload(x, y, 2, l2)


def sparse_binary(l2: float = 1e-3) -> Workload:
    x, y, _, _ = generate_rcv1like(400, 0, n_features=300, avg_nnz=10, seed=5)
    return _workload(SparseRows(x), torch.from_numpy(y), 2, l2)


def sparse_softmax(l2: float = 1e-3) -> Workload:
    x, _, _, _ = generate_rcv1like(300, 0, n_features=200, avg_nnz=8, seed=6)
    y = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(6))
    return _workload(SparseRows(x), y, 3, l2)


def dense_wide(l2: float = 1e-2) -> Workload:
    """More than 4096 features: the diagonal preconditioner on dense data."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(40, 4200, generator=g) / 60
    y = (x[:, :10].sum(1) > 0).long()
    return _workload(x, y, 2, l2)


KINDS = {
    "dense softmax": dense_softmax,
    "dense binary": dense_binary,
    "sparse binary": sparse_binary,
    "sparse softmax": sparse_softmax,
    "dense wide": dense_wide,
}


@pytest.mark.parametrize("kind", KINDS)
def test_meets_the_tolerance_by_autograd(kind: str) -> None:
    w = KINDS[kind]()
    opt = compute_optimum(w, grad_tol=1e-9)
    loss, grad_norm = autograd_check(w, opt)
    assert opt.grad_norm <= 1e-9 and grad_norm <= 1e-9, (opt.grad_norm, grad_norm)
    assert grad_norm == pytest.approx(opt.grad_norm, rel=1e-3, abs=1e-13)
    assert loss == pytest.approx(opt.loss, rel=1e-13)
    assert 0 < opt.iterations < 40


@pytest.mark.parametrize("kind", ["dense softmax", "dense binary", "sparse binary"])
def test_agrees_with_the_lbfgs_oracle(kind: str) -> None:
    w = KINDS[kind](l2=0.1)
    new = compute_optimum(w, grad_tol=1e-12)
    old = compute_optimum_lbfgs(w, grad_tol=1e-10, max_rounds=1)
    diff = float(np.linalg.norm(new.flat() - old.flat()))
    # F is λ-strongly convex: ‖θ - θ'‖ ≤ (‖∇F(θ)‖ + ‖∇F(θ')‖) / λ. L-BFGS stalls near
    # ‖∇F‖ ≈ 1e-9 (its line search meets F's rounding), which bounds the agreement.
    assert diff <= (new.grad_norm + old.grad_norm) / w.l2 + 1e-12
    assert new.loss == pytest.approx(old.loss, rel=1e-12)
    if kind == "dense binary":  # where L-BFGS gets to 2e-10
        assert diff <= 1e-8 * float(np.linalg.norm(old.flat()))


def test_a_short_run_raises_instead_of_returning_a_loose_optimum() -> None:
    # One round ends once ‖∇F‖ has fallen 100-fold, far from 1e-12.
    with pytest.raises(SolverError, match="did not converge: gradient norm .* > 1e-12"):
        compute_optimum(dense_softmax(), grad_tol=1e-12, max_rounds=1)


def test_no_status_line_off_a_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    compute_optimum(dense_softmax())
    assert capfd.readouterr() == ("", "")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    compute_optimum(dense_softmax())
    assert "computing w* of tiny (once; cached)" in stream.getvalue()
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    compute_optimum(dense_softmax(), progress=False)
    assert stream.getvalue() == ""


def test_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = dense_softmax()
    opt = cached_optimum(w, cache_dir=tmp_path)
    (path,) = tmp_path.glob("optimum-tiny-*.npz")

    def no_solve(_: Workload) -> Optimum:
        raise AssertionError("solved again instead of reading the cache")

    with monkeypatch.context() as mp:
        mp.setattr(convex, "compute_optimum", no_solve)
        again = cached_optimum(w, cache_dir=tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(again.params, opt.params, strict=True))
    assert (again.loss, again.grad_norm, again.iterations) == (
        opt.loss,
        opt.grad_norm,
        opt.iterations,
    )
    path.write_bytes(path.read_bytes()[:100])  # truncated: recomputed, not trusted
    assert np.array_equal(cached_optimum(w, cache_dir=tmp_path).flat(), opt.flat())
    # The cache format is part of the name: a file of another format is never read.
    monkeypatch.setattr(convex, "_CACHE_FORMAT", 1)
    assert convex._fingerprint(w) not in path.name
