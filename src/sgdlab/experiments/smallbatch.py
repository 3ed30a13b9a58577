r"""``sgdlab bench smallbatch``: proximal small-batch training against its inner optimizer (S3).

The claim (Zhang, Qu et al., IJCAI 2019): at small batch sizes the proximal wrapper
(:mod:`sgdlab.optim.proximal`) beats the optimizer it wraps, about +2 points of test accuracy
for SGD with momentum and +4 for Adam on CIFAR-10. Here four variants meet at each
(workload, batch size): ``sgd`` with momentum 0.9 against ``prox-sgd`` (the same inner SGD),
``adam`` against ``prox-adam``.

Protocol, on a budget two shared CPU cores can pay:

1. **Data.** A fixed seeded subset of ``subset`` training samples is the training set; a
   disjoint slice of ``validation`` further training samples scores the tuning; the full test
   set scores the final runs. Every batch size trains ``epochs`` epochs, that is
   :math:`\text{steps} = \text{epochs}\cdot\lfloor\text{subset}/b\rfloor`, with a constant
   learning rate (the prox variants decay it inside each window, as the method does).
2. **Tuning, equal budget, seed 0, validation accuracy.** Every variant first tries the same
   three learning rates, spaced by :math:`\sqrt{10}` around
   :math:`c_{\text{family}}\sqrt{b/16}` (:data:`LR_CENTRES`; square-root scaling with the
   batch). Then each spends ``len(lams)`` more trials on its second knob: a prox variant tries
   each :math:`\lambda` in ``lams`` at its best learning rate (its grid ran at the default
   :math:`\lambda`, :data:`sgdlab.optim.PROX_DEFAULTS`); a baseline, which has no
   :math:`\lambda`, refines its learning rate to :math:`\eta^\star 10^{\pm 1/4}` (the midpoints
   of the grid, on a log scale). Both thus train ``3 + len(lams)`` runs. The best validation
   accuracy wins; ties go to the lower validation loss. Under ``protocol="authors"`` a variant
   whose best grid rate is at an edge spends its first extra trial one grid step past it.
3. **Final.** ``seeds`` fresh seeds (``1..seeds``, never the tuning seed) at the chosen
   settings; test accuracy as mean ± sample standard deviation.
4. **Ablation** (at ``ablate_batch_sizes``): the harmonic in-window decay
   :math:`\eta_k = \eta/(k+1)` is also a learning-rate schedule, whose mean factor over a window
   of :math:`S` steps is :math:`H_S/S` (0.29 for :math:`S = 10`). Two variants of each prox
   variant, at its tuned :math:`\lambda`, separate it from the proximal term: ``λ=0`` keeps
   only the decay, at the prox variant's tuned rate (prox minus it: what the term adds on top
   of the decay); ``no decay`` (``inner_decay="none"``) keeps only the term, at the
   *baseline's* tuned rate (it minus the baseline: what the term adds to the plain optimizer).

``protocol="authors"`` (``--protocol authors``; :data:`~sgdlab.experiments.smallbatch_plan.
AUTHORS_PLAN` holds its full scale) runs the method as ``huiqu18/TRAlgorithm`` does: weight
decay 1e-4 on every contender, the step lr decay (``TrainConfig.schedule="step"``), the prox
variants at :math:`\lambda_t = \lambda_0\eta_0/\eta_t` with windows restarted every epoch, the
ablations ``λ=0`` and ``mean lr`` (the baseline at the prox rate times :func:`mean_decay`),
test accuracy every epoch, and paired tests by seed (:mod:`~sgdlab.experiments.smallbatch_stats`).

Training-loss curves are the minibatch losses the runner logs at every step, averaged in bins
of a tenth of an epoch and over the seeds. Every run is recorded in the results database under
the suite tag ``smallbatch-<time>``.

>>> lr_grid("sgd", 16)
(0.00791, 0.025, 0.0791)
>>> [round(x, 5) for x in refinements(0.025, 2)]
[0.0141, 0.0445]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from sgdlab.errors import ConfigError, DivergenceError
from sgdlab.experiments.smallbatch_plan import (
    AUTHORS_OPTIONS,
    AUTHORS_PROX_OPTIONS,
    BASELINE_OF,
    LR_CENTRES,
    VARIANTS,
    Record,
    SmallBatchPlan,
    ablations,
)
from sgdlab.experiments.smallbatch_report import write_outputs
from sgdlab.run.config import TrainConfig, check_output_paths
from sgdlab.run.train import train
from sgdlab.workloads import Workload, get_workload


def lr_grid(family: str, batch_size: int) -> tuple[float, float, float]:
    """Three learning rates spaced by sqrt(10) around the family's centre for this batch."""
    centre = LR_CENTRES[family] * math.sqrt(batch_size / 16)
    return tuple(_round(centre * 10.0 ** (k / 2)) for k in (-1, 0, 1))  # type: ignore[return-value]


def refinements(lr: float, n: int) -> list[float]:
    """``n`` learning rates around ``lr``: the half-way points to its grid neighbours first."""
    offsets = (-0.25, 0.25, -0.125, 0.125)[:n]
    return [_round(lr * 10.0**o) for o in offsets]


def mean_decay(window: int, epoch_steps: int | None) -> float:
    """The mean of the in-window factor ``1/(k+1)`` over the steps of one epoch (or of one
    window, if the window runs on): the prox variant's average step is its lr times this.

    >>> round(mean_decay(10, None), 4), round(mean_decay(10, 25), 4)
    (0.2929, 0.3257)
    """
    steps = range(epoch_steps if epoch_steps is not None else window)
    return sum(1.0 / (t % window + 1) for t in steps) / len(steps)


def split_workload(
    workload: Workload, subset: int, validation: int, test: int = 0
) -> tuple[Workload, Workload]:
    """``(tuning, final)``: both train on the same seeded ``subset`` of the training samples;
    the first evaluates on ``validation`` other training samples, the second on the test set,
    or on a fixed seeded subset of ``test`` of its samples (and then the training loss on
    ``test`` training samples, not 1,000: an evaluation of a CNN costs more than its epoch)."""
    if subset + validation > workload.num_train:
        raise ConfigError(
            f"subset {subset} + validation {validation} exceed the {workload.num_train} "
            f"training samples of {workload.name!r}"
        )
    if test > len(workload.y_test):
        raise ConfigError(f"test {test} exceeds the {len(workload.y_test)} test samples of "
                          f"{workload.name!r}")
    perm = torch.randperm(workload.num_train, generator=torch.Generator().manual_seed(0))
    train_idx, val_idx = perm[:subset], perm[subset : subset + validation]
    x, y = workload.x_train, workload.y_train
    if not isinstance(x, torch.Tensor) or not isinstance(workload.x_test, torch.Tensor):
        raise ConfigError(f"workload {workload.name!r}: smallbatch needs dense features")
    eval_size = min(subset, test or 1000)
    final = replace(workload, x_train=x[train_idx], y_train=y[train_idx], train_eval_size=eval_size)
    if test:
        gen = torch.Generator().manual_seed(1)
        test_idx = torch.randperm(len(workload.y_test), generator=gen)[:test]
        final = replace(final, x_test=workload.x_test[test_idx], y_test=workload.y_test[test_idx])
    tuning = replace(final, x_test=x[val_idx], y_test=y[val_idx])
    return tuning, final


def run_smallbatch(
    plan: SmallBatchPlan,
    db: Path,
    out: Path,
    quiet: bool = False,
    workloads: dict[str, Workload] | None = None,
) -> dict[str, Any]:
    """Tune, train and ablate as the module doc says; write table, curves and records to ``out``.

    ``workloads`` may hold pre-loaded workloads by name (the rest are loaded). Returns a
    JSON-ready summary: the suite tag, the table rows, the chosen settings and the file paths.
    """
    plan.validate()
    check_output_paths(db, out)
    from rich.console import Console

    bench = _Bench(
        plan,
        db,
        out,
        f"smallbatch-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}",
        Console(stderr=True, quiet=quiet),
    )
    for name in plan.workloads:
        loaded = (workloads or {}).get(name) or get_workload(name)
        tuning, final = split_workload(loaded, plan.subset, plan.validation, plan.test)
        for b in plan.batch_sizes:
            for variant in VARIANTS:
                bench.cell(tuning, final, b, variant)

    return write_outputs(plan, bench.tag, bench.records, bench.chosen, db, out, bench.console)


@dataclass
class _Bench:
    """The state of one benchmark invocation: where runs go, and what they gave."""

    plan: SmallBatchPlan
    db: Path
    out: Path
    tag: str
    console: Any
    records: list[Record] = field(default_factory=list)
    chosen: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cell(self, tuning: Workload, final: Workload, b: int, variant: str) -> None:
        """Tune ``variant`` at batch ``b`` (seed 0), then its final and ablation runs."""
        plan, family = self.plan, VARIANTS[variant][0]
        grid = lr_grid(family, b)
        trials = [self.run(tuning, b, variant, "tune", 0, lr, {}) for lr in grid]
        best, budget = _best(trials), len(plan.lams)
        if plan.protocol == "authors" and best.lr in (grid[0], grid[-1]):
            # Best at an edge of the grid: the first extra trial, for every variant alike, is
            # one more grid step past it (the prox variants' best rates sit ~3x higher).
            beyond = _round(best.lr * 10.0 ** (0.5 if best.lr == grid[-1] else -0.5))
            trials.append(self.run(tuning, b, variant, "tune", 0, beyond, {}))
            best, budget = _best(trials), budget - 1
        if variant in BASELINE_OF:  # a prox variant: its second knob is lambda
            extra = [(best.lr, {"lam": lam}) for lam in plan.lams[:budget]]
        else:  # a baseline has none: it refines its learning rate instead
            extra = [(lr, {}) for lr in refinements(best.lr, budget)]
        trials += [self.run(tuning, b, variant, "tune", 0, lr, opts) for lr, opts in extra]
        best = _best(trials)
        chosen = {k: v for k, v in best.options.items() if k not in VARIANTS[variant][2]}
        self.chosen[f"{final.name} b={b} {variant}"] = {"lr": best.lr, **chosen}
        seeds = range(1, plan.seeds + 1)
        for seed in seeds:
            self.run(final, b, variant, "final", seed, best.lr, chosen)
        if variant in BASELINE_OF and b in plan.ablate_batch_sizes:
            for label, (change, lr_of) in ablations(plan.protocol).items():
                lr, opts = best.lr, {**chosen, **change}
                if lr_of == "baseline":
                    lr = self.chosen[f"{final.name} b={b} {BASELINE_OF[variant]}"]["lr"]
                elif lr_of == "mean":  # the baseline optimizer at the prox variant's mean step
                    epoch = plan.subset // b if plan.protocol == "authors" else None
                    lr, opts = _round(best.lr * mean_decay(_window(chosen), epoch)), {}
                for seed in seeds:
                    self.run(final, b, f"{variant} {label}", "ablation", seed, lr, opts)

    def run(
        self,
        workload: Workload,
        b: int,
        variant: str,
        role: str,
        seed: int,
        lr: float,
        opts: dict[str, Any],
    ) -> Record:
        """Train once with the runner and record it (a diverged run has no accuracy)."""
        base, _, ablation = variant.partition(" ")
        if ablation == "mean lr":  # the baseline optimizer, at the prox variant's mean step
            base = BASELINE_OF[base]
        _, registry_name, fixed = VARIANTS[base]
        steps_per_epoch = self.plan.subset // b
        steps = self.plan.epochs * steps_per_epoch
        authors = self.plan.protocol == "authors"
        if authors:
            prox = {**AUTHORS_PROX_OPTIONS, "epoch_steps": steps_per_epoch} if (
                base in BASELINE_OF) else {}
            fixed = {**fixed, **AUTHORS_OPTIONS, **prox}
        rec = Record(
            workload.name, b, variant, role, seed, lr, {**fixed, **opts}, steps, steps_per_epoch
        )
        self.console.print(
            f"[{len(self.records) + 1}] {workload.name} b={b} {variant} {role} seed {seed} "
            f"lr={lr} {opts or ''}"
        )
        config = TrainConfig(
            workload=workload.name,
            optimizer=registry_name,
            lr=lr,
            steps=steps,
            batch_size=b,
            seed=seed,
            optimizer_options=rec.options,
            # Under the authors' protocol a final run is scored every epoch (its curve).
            eval_every=steps_per_epoch if authors and role != "tune" else steps,
            schedule="step" if authors else "constant",
            log_every=1,
            db=self.db,
            out=self.out / "runs",
            suite=self.tag,
            progress=False,
            threads=self.plan.threads,
            # Not get_workload options (the runner is handed the workload): a record, in the
            # database, of what the run trained and was scored on.
            workload_options={
                "train_subset": self.plan.subset,
                "scored_on": "validation" if role == "tune" else "test",
            },
        )
        self.records.append(rec)
        try:
            result = train(config, workload=workload)
        except DivergenceError:
            return rec
        rec.run_id, rec.accuracy = result.run_id, result.metric_value
        rec.eval_loss, rec.train_loss = result.test_loss, result.final_loss
        rec.ms_per_step = 1000 * result.train_seconds / steps
        return rec


def _best(trials: Sequence[Record]) -> Record:
    done = [t for t in trials if t.accuracy is not None]
    if not done:
        raise ConfigError(
            f"every tuning run of {trials[0].variant} at batch {trials[0].batch_size} diverged"
        )
    return max(done, key=lambda t: (t.accuracy, -(t.eval_loss or 0.0)))


def _window(options: dict[str, Any]) -> int:
    from sgdlab.optim import PROX_DEFAULTS

    return int(options.get("window", PROX_DEFAULTS["window"]))


def _round(x: float) -> float:
    return float(f"{x:.3g}")


# The `sgdlab bench quick` showcase (make demo): one small cell, one seed, 20 runs, under the
# authors' protocol at batch 8, where the paper claims its gain and where `bench smallbatch
# --protocol authors` measured (benchmarks/RESULTS.md, S3): a constant lr for 2 epochs at batch
# 16, the old setting, is not the method as its authors ran it. No measured cell (batch 4-16,
# mlp-mnist and cnn-fmnist) showed a gain, so none supports another setting over this one.
SHOWCASE_PLAN = SmallBatchPlan(
    workloads=("mlp-mnist",),
    batch_sizes=(8,),
    subset=2000,
    validation=500,
    epochs=2,
    seeds=1,
    lams=(0.3,),
    ablate_batch_sizes=(),
    protocol="authors",
)


def smallbatch_showcase(ctx: Any) -> Any:
    """A ``SHOWCASES["quick"]`` entry: :data:`SHOWCASE_PLAN` as a report section."""
    from sgdlab.report.sections import Section

    plan = SHOWCASE_PLAN
    summary = run_smallbatch(plan, db=ctx.db, out=ctx.out / "smallbatch", quiet=ctx.quiet)
    keep = ("workload", "batch", "variant", "lr", "lam", "test acc %", "vs baseline", "ms/step")
    return Section(
        title="S3: proximal small-batch training (demo scale)",
        text=(
            f"The authors' protocol (weight decay 1e-4, step lr decay, lambda_t = 0.1 lr_0/lr_t, "
            f"window restarted each epoch) at demo scale: {plan.subset} training samples, "
            f"{plan.epochs} epochs, one seed, each variant tuned on {3 + len(plan.lams)} runs; "
            "the evidence, with seeds, ablations and paired tests, is `sgdlab bench smallbatch "
            "--protocol authors` (benchmarks/RESULTS.md, S3)."
        ),
        rows=[{k: row[k] for k in keep} for row in summary["rows"]],
        images=[Path(p) for p in summary["plots"]],
    )
