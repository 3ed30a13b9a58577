from __future__ import annotations

import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sgdlab.errors import ConfigError, DataError
from sgdlab.workloads import SparseRows, Workload, get_workload, workload_names, workload_spec
from sgdlab.workloads.convex import cached_optimum

SMALL = {"sparse-logreg": {"n_samples": 3000}}


def _cifar_archive(path: Path, n: int = 24) -> Path:
    """A CIFAR-10 python archive in the standard layout, with ``n`` random images a batch."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            blob = pickle.dumps(
                {
                    b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    b"labels": rng.integers(0, 10, n).tolist(),
                },
                protocol=4,  # the real archive's python-2 pickles are tested in test_cifar.py
            )
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, __import__("io").BytesIO(blob))
    return path


def _load(name: str, tmp_path: Path) -> Workload:
    options: dict[str, object] = dict(SMALL.get(name, {}))
    if name == "resnet18-cifar10":
        options.update(path=str(_cifar_archive(tmp_path / "cifar.tar.gz")), width=4)
        return get_workload(name, cache_dir=tmp_path / "cache", **options)
    try:
        return get_workload(name, **options)
    except DataError as exc:
        pytest.skip(f"data for {name} is not installed here: {exc}")


@pytest.mark.parametrize("name", workload_names())
def test_every_workload_trains_a_step_and_evaluates(name: str, tmp_path: Path) -> None:
    w = _load(name, tmp_path)
    spec = workload_spec(name)
    assert w.metric == spec.metric == "accuracy" and 0 < w.target <= 1 == (spec.target <= 1)
    model = w.make_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = w.batch(torch.arange(8))
    loss = w.loss(model, x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    opt.step()
    w.train_eval_size = 64 if w.train_eval_size else None
    values = w.evaluate(model)
    assert set(values) == {"train_loss", "test_loss", "accuracy"}
    assert 0.0 <= values["accuracy"] <= 1.0
    assert spec.convex == w.convex


def test_same_seed_same_model() -> None:
    w = get_workload("logreg-breast-cancer")
    a, b, c = w.make_model(1), w.make_model(1), w.make_model(2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_evaluate_draws_no_random_numbers() -> None:
    w = get_workload("cnn-fmnist")
    w.train_eval_size = 256
    model = w.make_model(0)
    state = torch.get_rng_state()
    w.evaluate(model)
    assert torch.equal(state, torch.get_rng_state()) and model.training


@pytest.mark.parametrize("name", ["logreg-breast-cancer", "logreg-fmnist", "sparse-logreg"])
def test_L_bounds_every_components_curvature(name: str) -> None:
    w = get_workload(name, **SMALL.get(name, {}))
    assert w.mu == w.l2 > 0 and w.L is not None
    model = w.make_model(0).double()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.data.normal_(0, 0.01, generator=gen)  # near θ = 0, where the curvature peaks
    norms = (
        w.x_train.row_norms_sq()
        if isinstance(w.x_train, SparseRows)
        else w.x_train.flatten(1).pow(2).sum(1)
    )
    for i in norms.topk(3).indices.tolist():  # the largest Hessian eigenvalue of f_i
        x, y = w.batch(torch.tensor([i]))
        x = x.double()
        v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        for _ in range(30):
            grads = torch.autograd.grad(w.loss(model, x, y), params, create_graph=True)
            hv = torch.autograd.grad(grads, params, grad_outputs=v)
            norm = torch.sqrt(sum((h * h).sum() for h in hv))
            v = [h / norm for h in hv]
        assert float(norm) <= w.L * (1 + 1e-9), (i, float(norm), w.L)
        # Not vacuous: at θ ≈ 0 the binary per-sample bound c‖x̃‖² + λ is attained
        # (σ(1-σ) = 1/4), the multinomial one within (1/K)/(1/2) = 0.2 for K = 10 classes.
        c = 0.25 if w.num_classes == 2 else 0.5
        own = c * (float(norms[i]) + 1) + w.l2
        assert float(norm) >= (0.95 if w.num_classes == 2 else 0.19) * own


def test_optimum_is_a_minimiser_and_is_cached(tmp_path: Path) -> None:
    w = get_workload("logreg-breast-cancer")
    opt = cached_optimum(w, cache_dir=tmp_path)
    assert opt.grad_norm <= 1e-9  # L-BFGS, before, stalled at 2e-9 here
    files = list(tmp_path.glob("optimum-*.npz"))
    assert len(files) == 1
    start = time.perf_counter()
    again = cached_optimum(w, cache_dir=tmp_path)
    assert time.perf_counter() - start < 0.5
    assert np.array_equal(again.flat(), opt.flat()) and again.loss == opt.loss
    model = w.make_model(0).double()
    x, y = w.x_train.double(), w.y_train
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p, star in zip(model.parameters(), opt.params, strict=True):
            p.copy_(torch.from_numpy(star))
        assert float(w.loss(model, x, y)) == pytest.approx(opt.loss, rel=1e-12)
        for p in model.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        assert float(w.loss(model, x, y)) > opt.loss
    files[0].write_bytes(b"not a zip")  # a corrupt cache is recomputed, not trusted
    assert np.allclose(cached_optimum(w, cache_dir=tmp_path).flat(), opt.flat(), atol=1e-7)


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="has no option depth; options: l2"):
        get_workload("logreg-breast-cancer", depth=3)
    with pytest.raises(ConfigError, match="invalid l2: -1.0"):
        get_workload("logreg-breast-cancer", l2="-1")
    with pytest.raises(ConfigError, match="not convex"):
        get_workload("mlp-mnist").optimum()
    w = get_workload("logreg-breast-cancer", l2="0.5")
    assert w.l2 == 0.5 == w.mu
