"""mL-BFGS's authors' variant (issue S5, part 1): ``variant="authors"`` steps as our own compact
re-statement of the update in the authors' public code (``yuehniu/mL-BFGS``,
``opt/slimblock.py``), written here from reading it, to rounding."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from sgdlab.optim._curvature import two_loop
from sgdlab.optim.mlbfgs import MLBFGS, MLBFGSConfig

F64 = torch.float64
EPS = 1e-12  # their epsilon in the curvature ratio and in H0


class AuthorsTranscription:
    """One block, no weight decay: the authors' step on flat float64 vectors."""

    def __init__(
        self,
        lr: float,
        mom: float,
        m: int,
        period: int,
        bp: float,
        bg: float,
        mu: float,
        band: tuple[float, float, float],
    ) -> None:
        self.lr, self.mom, self.m, self.period = lr, mom, m, period
        self.bp, self.bg, self.mu, self.band = bp, bg, mu, band
        self.t = 0
        self.avg_p = self.avg_g = self.hist_p = self.hist_g = self.buf = None
        self.s: list[Tensor] = []
        self.y: list[Tensor] = []

    def step(self, theta: Tensor, g: Tensor) -> Tensor:
        self.t += 1
        if self.avg_p is None:
            self.avg_p, self.avg_g = theta.clone(), g.clone()
        else:  # un-normalised running averages
            self.avg_p = self.bp * self.avg_p + theta
            self.avg_g = self.bg * self.avg_g + g
        if self.t % self.period == 0:
            if self.hist_p is None:  # the first pair step only takes snapshots
                self.hist_p, self.hist_g = self.avg_p.clone(), self.avg_g.clone()
            else:
                s, y = self.avg_p - self.hist_p, self.avg_g - self.hist_g
                self.hist_p, self.hist_g = self.avg_p.clone(), self.avg_g.clone()
                if self.s:  # pair momentum with the previous (damped) pair
                    s = (1 - self.mu) * s + self.mu * self.s[-1]
                    y = (1 - self.mu) * y + self.mu * self.y[-1]
                lo, hi, delta = self.band
                tao = float(s @ y / (s @ s + EPS))
                phi = (
                    (1 - lo) / (1 - tao) if tao < lo else (hi - 1) / (tao - 1) if tao > hi else 1.0
                )
                phi = min(phi, 1 - delta)
                y = phi * y + (1 - phi) * s
                self.s, self.y = (self.s + [s])[-self.m :], (self.y + [y])[-self.m :]
            self.avg_g = g.clone()  # the gradient average restarts at every pair step
        d = g
        if self.s:
            rho = [1.0 / float(a @ b) for a, b in zip(self.s, self.y, strict=True)]
            h0 = float(self.s[-1] @ self.y[-1] / (self.y[-1] @ self.y[-1] + EPS))
            d = two_loop(g, self.s, self.y, rho, h0)
            d = d / d.norm()  # unit norm over the whole (one-block) direction
        self.buf = d.clone() if self.buf is None else self.mom * self.buf + d
        return theta - self.lr * self.buf


def test_authors_variant_reproduces_a_transcription_of_their_update() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 6, generator=g, dtype=F64) * torch.linspace(0.3, 2.0, 6, dtype=F64)
    target = torch.sin(x @ torch.randn(6, generator=g, dtype=F64))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    model = model.to(F64)
    kw = dict(
        lr=0.05,
        momentum=0.9,
        history_size=3,
        update_freq=3,
        beta_param=0.9,
        beta_grad=0.99,
        pair_momentum=0.8,
        damping=(0.01, 1.5, 0.2),
    )
    opt = MLBFGS(model.parameters(), max_norm=None, blocks="size:1000", variant="authors", **kw)
    ref = AuthorsTranscription(
        kw["lr"],
        kw["momentum"],
        kw["history_size"],
        kw["update_freq"],
        kw["beta_param"],
        kw["beta_grad"],
        kw["pair_momentum"],
        kw["damping"],
    )
    for step in range(24):  # pairs from step 6 on, the history full and wrapped
        idx = torch.randint(0, 64, (16,), generator=g)
        model.zero_grad()
        ((model(x[idx]).squeeze(1) - target[idx]) ** 2).mean().backward()
        theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # type: ignore[union-attr]
        expected = ref.step(theta, grad)
        opt.step()
        ours = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-11, msg=f"step {step + 1}")
    assert opt.diagnostics()["history"] == {0: 3}


def test_authors_preset_and_bad_variant() -> None:
    cfg = MLBFGSConfig.authors(lr=0.2)
    assert cfg.variant == "authors" and cfg.damping == (0.01, 1.5, 0.2)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    assert len(cfg.build(net.parameters()).blocks) == 1  # one large block
    with pytest.raises(ValueError, match="Invalid variant"):
        MLBFGS(net.parameters(), variant="paper")
