"""How fast the SGD bounds evaluate, and how close they sit to SGD on a real least-squares run.

Run: ``PYTHONPATH=src python benchmarks/bench_sgd_bounds.py [--steps 1000000] [--json]``.

1. Speed: medians over repeats of each curve at ``--steps`` steps, beside one run of the plain
   Python loop that specifies the recursion (the vectorised path must match it to 1e-10).
2. Tightness: seeded SGD with η_t = α/(μ(t+E)) on a least-squares problem (breast-cancer
   features from scikit-learn, standardised, with a ridge term so that μ > 0), averaged over
   ``--runs`` independent runs; the measured E‖w_t - w*‖² is compared with the recursion and
   the closed form C/(t+E) at a few checkpoints. All constants (μ, L, N, w*) are exact.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.datasets import load_breast_cancer

from sgdlab.theory import sgd_bounds as sb


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def speed(steps: int, repeats: int) -> dict[str, float]:
    args = (0.01, 1.0, 1.0, 100.0, steps)
    etas = sb.diminishing_step_sizes(0.01, 1.0, steps, alpha=2.0)
    out = {
        "diminishing_bound_s": median_seconds(lambda: sb.diminishing_bound(*args), repeats),
        "diminishing_recursion_s": median_seconds(
            lambda: sb.diminishing_recursion(*args), repeats),
        "constant_recursion_s": median_seconds(
            lambda: sb.constant_recursion(*args, eta=0.5), repeats),
    }
    start = time.perf_counter()
    loop = sb._recursion_loop(etas, 0.01, 1.0, 100.0)
    out["python_loop_s"] = time.perf_counter() - start
    fast = sb.diminishing_recursion(*args).bound
    out["max_rel_diff_vs_loop"] = float(np.max(np.abs(fast / loop - 1.0)))
    return out


def tightness(steps: int, runs: int, alpha: float, seed: int) -> dict[str, object]:
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    X = X[:, :8]  # a few features keep the exact constants cheap and μ/L moderate
    y = y - y.mean()
    n, d = X.shape
    lam = 0.1  # f_i(w) = ½ (x_iᵀw - y_i)² + (λ/2)‖w‖²: convex, L_i = ‖x_i‖² + λ
    H = X.T @ X / n + lam * np.eye(d)
    w_star = np.linalg.solve(H, X.T @ y / n)
    g_star = (X @ w_star - y)[:, None] * X + lam * w_star
    mu = float(np.linalg.eigvalsh(H)[0])
    L = float(np.max(np.sum(X**2, axis=1)) + lam)
    N = sb.noise_constant(g_star)
    w0_dist2 = float(w_star @ w_star)  # start at w = 0
    etas = sb.diminishing_step_sizes(mu, L, steps, alpha=alpha)
    rng = np.random.default_rng(seed)
    w = np.zeros((runs, d))
    checkpoints = sorted({int(c) for c in np.geomspace(1, steps, 6).round()})
    measured = {}
    for t, eta in enumerate(etas, start=1):
        i = rng.integers(n, size=runs)
        x = X[i]
        w -= eta * ((np.sum(x * w, axis=1) - y[i])[:, None] * x + lam * w)
        if t in checkpoints:
            measured[t] = float(np.mean(np.sum((w - w_star) ** 2, axis=1)))
    rec = sb.diminishing_recursion(mu, L, N, w0_dist2, steps, alpha=alpha)
    closed = sb.diminishing_bound(mu, L, N, w0_dist2, steps, alpha=alpha)
    rows = [
        {"t": t, "measured": m, "recursion": float(rec.bound[t]), "closed_form": float(
            closed.bound[t]), "closed_over_measured": float(closed.bound[t] / m)}
        for t, m in measured.items()
    ]
    return {"mu": mu, "L": L, "N": N, "w0_dist2": w0_dist2, "alpha": alpha, "E": closed.E,
            "C": closed.C, "runs": runs, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sgd-steps", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {
        "speed": {"steps": args.steps, **speed(args.steps, args.repeats)},
        "tightness": tightness(args.sgd_steps, args.runs, args.alpha, args.seed),
    }
    if args.json:
        print(json.dumps(result))
        return
    s = result["speed"]
    print(f"speed at {s['steps']} steps (median of {args.repeats}):")
    for key in ("diminishing_bound_s", "diminishing_recursion_s", "constant_recursion_s",
                "python_loop_s"):
        print(f"  {key:26s} {s[key] * 1e3:9.2f} ms")
    print(f"  vectorised vs loop, max relative difference {s['max_rel_diff_vs_loop']:.1e}")
    tight = result["tightness"]
    print(f"tightness on breast-cancer least squares (mu={tight['mu']:.4g}, L={tight['L']:.4g}, "
          f"N={tight['N']:.4g}, alpha={tight['alpha']}, E={tight['E']:.4g}, "
          f"runs={tight['runs']}):")
    print(f"  {'t':>7s} {'measured':>11s} {'recursion':>11s} {'C/(t+E)':>11s} {'ratio':>7s}")
    for row in tight["rows"]:
        print(f"  {row['t']:7d} {row['measured']:11.4e} {row['recursion']:11.4e} "
              f"{row['closed_form']:11.4e} {row['closed_over_measured']:7.1f}")


if __name__ == "__main__":
    main()
