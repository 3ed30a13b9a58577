"""Train once: deterministic seeds, an honest clock, an event log, results in SQLite,
checkpoints that resume bit for bit.

The clock counts only the training steps (batch gathering, forward, backward, the optimizer
and scheduler steps), synchronising the device before it is read; evaluation, logging and
checkpointing are outside it. Batches come from a fresh seeded permutation each epoch, a pure
function of (seed, epoch), so a resumed run draws the very batches the uninterrupted run
would have drawn. A checkpoint holds the model, the optimizer, the scheduler, the RNG state,
the clock and the event log's length; ``resume`` truncates the log to that length and forgets
what the database recorded after that step, so the resumed run ends exactly as an
uninterrupted one (same parameters, same final loss).

Every loss evaluation's loss and gradients, and the state about to be checkpointed, are
checked for NaN and infinity (see :mod:`sgdlab.run.finite`): a non-finite step stops the
run with a :class:`~sgdlab.errors.DivergenceError` that names the step, what was not finite and
the last good checkpoint, and marks it ``diverged`` in the store; with ``on_nonfinite="skip"``
the step is undone and counted instead. No checkpoint is ever written with a NaN in it, so a
run stopped by one resumes from the last good state.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR

from sgdlab.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from sgdlab.errors import CheckpointError, ConfigError, DivergenceError
from sgdlab.optim import DiminishingLR, load_optimizer
from sgdlab.optim.registry import SINGLE_PASS_OPTIMIZERS
from sgdlab.run.config import TrainConfig
from sgdlab.run.finite import (
    MAX_CONSECUTIVE_SKIPS,
    FiniteGuard,
    NonFinite,
    Snapshot,
    nonfinite_state,
    unloadable_state,
)
from sgdlab.run.loop import EpochSampler, Run, diminishing_constants, first_reaching, warm_up_torch
from sgdlab.run.runfiles import (
    CHECKPOINT,
    EVENTS,
    MODEL,
    RESULT,
    EventLog,
    new_run_dir,
    resumable_run_dir,
)
from sgdlab.run.store import ResultStore
from sgdlab.workloads import Workload, get_workload


@dataclass
class RunResult:
    """What one run reports (``sgdlab train --json`` prints :meth:`to_json`)."""

    run_id: int
    workload: str
    optimizer: str
    steps: int
    final_loss: float
    metric: str
    metric_value: float
    test_loss: float
    train_seconds: float
    time_to_target: float | None
    step_to_target: int | None
    out_dir: str
    loop_seconds: float = 0.0
    outside_clock_seconds: float = 0.0
    skipped_steps: int = 0
    evaluations: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("evaluations")
        return d


def versions() -> dict[str, str]:
    import numpy

    from sgdlab import __version__

    return {
        "sgdlab": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(config: TrainConfig, workload: Workload | None = None) -> RunResult:
    """Run ``config`` to its last step (or resume it) and record it; see the module doc."""
    return SingleRun(config, workload).run()


class SingleRun(Run[RunResult]):
    """One run of a :class:`TrainConfig` in this process (:func:`train`)."""

    def __init__(self, config: TrainConfig, workload: Workload | None = None) -> None:
        self.config, self._given = config, workload
        self.steps, self.checkpoint_every = config.steps, config.checkpoint_every
        # The progress bar's update (done, loss): nothing unless a bar is shown (``stepping``).
        self.bar: Callable[[int, float], Any] = lambda done, loss: None

    # --- build and resume --------------------------------------------------------------------

    def build(self) -> None:
        config = self.config
        config.validate()
        if config.threads:
            torch.set_num_threads(config.threads)
        device = self.device = torch.device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda requested but no CUDA device is available")
        workload = self._given or get_workload(config.workload, **config.workload_options)
        self.workload = workload
        torch.manual_seed(config.seed)
        self.model = workload.make_model(config.seed).to(device)
        self.opt = load_optimizer(
            config.optimizer, self.model.parameters(), lr=config.lr, **config.optimizer_options
        )
        self.sched: LRScheduler | None = None
        factor = config.lr_factor()
        if factor is not None:  # a warm-up, and the step decay if any
            self.sched = LambdaLR(self.opt, factor)
        elif config.schedule == "step":
            # By default as the proximal method's authors decay it (at 50% and 75% of training).
            self.sched = MultiStepLR(self.opt, config.decay_steps(), config.gamma)
        if config.schedule == "diminishing":
            mu, L = diminishing_constants(
                workload, config.mu, config.L,
                f"--schedule diminishing needs --mu and --L: workload {workload.name!r} is not "
                "convex",
            )
            self.sched = DiminishingLR(self.opt, mu=mu, L=L, alpha=config.alpha)
        self.sampler = EpochSampler(workload.num_train, config.batch_size, config.seed)
        folder = resumable_run_dir if config.resume else new_run_dir
        out = folder(config.out_dir())
        self.out, self.ckpt_path = out, out / CHECKPOINT

        self.store = ResultStore(config.db)
        self.train_seconds, self.run_id = 0.0, 0
        self.reached: tuple[float, int] | None = None
        self.skipped = self.consecutive = 0  # steps skipped under skip: in all, and in a row
        self.last_good: int | None = None  # the step of the newest checkpoint on disk
        self.checked_loadable = False  # whether a checkpoint of this state can be read back

    def resume(self) -> int:
        config, out, device = self.config, self.out, self.device
        start, log_offset = self._load_checkpoint() if config.resume else (0, None)
        if not self.run_id:
            self.run_id = self.store.start_run(
                workload=config.workload,
                optimizer=config.optimizer,
                config=config.to_json(),
                versions=versions(),
                machine=machine(config.device),
                suite=config.suite,
                out_dir=str(out),
            )

        self.log = EventLog(out / EVENTS, log_offset)
        if config.resume:
            self.log.write("resume", step=start, run_id=self.run_id)
        else:
            self.log.write("start", run_id=self.run_id, config=config.to_json(),
                           versions=versions())
        self.eval_every = config.eval_every or max(1, config.steps // 10)
        self.log_every = config.log_every or max(1, config.steps // 200)
        self.evaluations: list[dict[str, float]] = []
        self.samples: list[tuple[int, float, float]] = []
        self.guard = FiniteGuard(self.model, device)
        self.evaluated: list[float] = []  # the loss of each closure evaluation of this step
        self._x = self._y = torch.empty(0)

        # torch's first-order optimizers evaluate a closure exactly once, before their update:
        # for them calling it here is the same computation without the per-step closure
        # machinery, and the gradient is checked before step() so a skipped step needs nothing
        # put back. Any other optimizer may change its state before a closure fails the check:
        # under ``skip`` the runner snapshots model and optimizer before each of its steps.
        self.single_pass = type(self.opt) in SINGLE_PASS_OPTIMIZERS
        self.snapshot_each_step = config.on_nonfinite == "skip" and not self.single_pass
        self.model.train()
        if start == 0:
            self._evaluate(0)  # where every curve starts
        warm_up_torch()
        self.loop_start = time.perf_counter()
        self.outside = 0.0  # evaluation and checkpoint time, for the harness-overhead benchmark
        return start

    def _load_checkpoint(self) -> tuple[int, int | None]:
        config = self.config
        state = load_checkpoint(self.ckpt_path)
        if state.get("key") != config.key():
            raise CheckpointError(
                f"checkpoint {self.ckpt_path} belongs to another configuration; "
                "resume with the arguments of the run that wrote it"
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, self.train_seconds = state["step"], state["train_seconds"]
        self.reached = (
            (float(state["reached"][0]), int(state["reached"][1])) if state["reached"] else None
        )
        self.run_id = state["run_id"]
        self.skipped = int(state.get("skipped_steps", 0))
        self.consecutive = int(state.get("consecutive_skips", 0))
        self.last_good, self.checked_loadable = start, True
        if self.store.has_run(self.run_id):
            self.store.resume_run(self.run_id, start)
        else:
            self.run_id = 0
        return start, state["log_offset"]

    # --- a step ------------------------------------------------------------------------------

    def _closure(self) -> Any:  # torch types closures as returning float; ours return a tensor
        self.opt.zero_grad(set_to_none=True)
        loss = self.workload.loss(self.model, self._x, self._y)
        loss.backward()
        try:  # raises NonFinite before anything uses the gradient
            self.evaluated.append(self.guard.check(loss))
        except NonFinite as exc:
            if self.evaluated:  # L-BFGS and the like: the step had moved the iterate already
                exc.what += f" (evaluation {len(self.evaluated) + 1} of the step)"
            raise
        return loss

    def stepping(self, start: int) -> contextlib.AbstractContextManager[Any]:
        return _progress(self.config, start, self)

    def step(self, step: int) -> None:
        config, opt = self.config, self.opt
        t0 = time.perf_counter()
        done = step + 1
        self._x, self._y = self.workload.batch(self.sampler.indices(step), self.device)
        self.evaluated.clear()
        before = Snapshot(self.model, opt) if self.snapshot_each_step else None
        try:
            if self.single_pass:
                loss = self._closure()
                opt.step()
            else:
                loss = opt.step(self._closure)
        except NonFinite as exc:
            if config.on_nonfinite == "stop":
                self.diverge(done, step, exc.what)
            if before is not None:
                before.restore(self.model, opt)
            self.skipped, self.consecutive = self.skipped + 1, self.consecutive + 1
            self.log.write("skip", step=done, what=exc.what, in_a_row=self.consecutive)
            if self.consecutive >= MAX_CONSECUTIVE_SKIPS:
                self.diverge(
                    done,
                    step,
                    f"{exc.what}, {self.consecutive} steps in a row skipped "
                    "(the limit of --on-nonfinite skip)",
                )
            loss = None
        else:
            self.consecutive = 0
            if self.sched is not None:
                self.sched.step()
        _sync(self.device)
        self.train_seconds += time.perf_counter() - t0
        if loss is not None and (done % self.log_every == 0 or done == config.steps):
            value = self.evaluated[0] if self.evaluated else float(torch.as_tensor(loss).detach())
            self.samples.append((done, self.train_seconds, value))
            self.log.write(
                "step",
                step=done,
                loss=value,
                train_seconds=self.train_seconds,
                lr=opt.param_groups[0]["lr"],
            )
            self.bar(done, value)

    # --- off the clock -----------------------------------------------------------------------

    def evaluate(self, done: int) -> None:
        t1 = time.perf_counter()
        self._evaluate(done)
        self.outside += time.perf_counter() - t1

    def _evaluate(self, step: int) -> None:
        values = self.workload.evaluate(self.model, self.device)
        row = {"step": step, "train_seconds": self.train_seconds, **values}
        self.evaluations.append(row)
        self.store.add_evaluation(self.run_id, step, self.train_seconds, values,
                                  self.workload.metric)
        self.log.write("eval", **row)
        if self.reached is None and first_reaching([row], self.workload.metric,
                                                   self.workload.target):
            self.reached = (self.train_seconds, step)

    def checkpoint(self, done: int) -> None:
        t1 = time.perf_counter()
        self._checkpoint(done)
        self.outside += time.perf_counter() - t1

    def _checkpoint(self, step: int) -> None:
        config, model, opt = self.config, self.model, self.opt
        model_state, opt_state = model.state_dict(), opt.state_dict()
        bad = nonfinite_state(model, opt, model_state=model_state, optimizer_state=opt_state)
        if bad is not None:
            self.diverge(step, step, f"{bad}, found before writing its checkpoint")
        state = {
            "key": config.key(),
            "step": step,
            "run_id": self.run_id,
            "train_seconds": self.train_seconds,
            "model": model_state,
            "optimizer": opt_state,
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "rng": torch.get_rng_state(),
            "reached": list(self.reached) if self.reached else None,
            "skipped_steps": self.skipped,
            "consecutive_skips": self.consecutive,
        }
        if not self.checked_loadable:
            why = unloadable_state(state)
            if why is not None:
                raise CheckpointError(
                    f"optimizer {config.optimizer} keeps {why} in its state, which a checkpoint "
                    "cannot hold (read with weights_only=True): it could never be resumed; "
                    "run it without --checkpoint-every"
                )
            self.checked_loadable = True
        self.store.add_samples(self.run_id, self.samples)
        self.samples.clear()
        self.log.write("checkpoint", step=step)
        state["log_offset"] = self.log.offset()
        save_checkpoint(state, self.ckpt_path)
        self.last_good = step

    def diverge(self, step: int, steps_done: int, what: str) -> NoReturn:
        """Mark the run diverged and stop, naming the step, the culprit and the checkpoint."""
        store = self.store
        store.add_samples(self.run_id, self.samples)
        where = (
            f"last good checkpoint: {self.ckpt_path} (step {self.last_good})"
            if self.last_good is not None
            else "no checkpoint was written (see --checkpoint-every)"
        )
        self.log.write("diverged", step=step, what=what, checkpoint=self.last_good)
        self.log.close()
        store.finish_run(
            self.run_id, status="diverged", steps_done=steps_done,
            extra={"skipped_steps": self.skipped},
        )
        store.close()
        raise DivergenceError(
            f"training diverged at step {step}: {what} (optimizer {self.config.optimizer}, "
            f"lr {self.config.lr}); {where}"
        )

    # --- the end -----------------------------------------------------------------------------

    def finish(self) -> RunResult:
        config, workload, store = self.config, self.workload, self.store
        loop_seconds = time.perf_counter() - self.loop_start
        bad = nonfinite_state(self.model)
        if bad is not None:  # an optimizer can make a NaN from finite gradients on the last step
            self.diverge(config.steps, config.steps, f"{bad}, found at the end of the run")

        store.add_samples(self.run_id, self.samples)
        last = (
            self.evaluations[-1]
            if self.evaluations
            else {"step": config.steps, **workload.evaluate(self.model, self.device)}
        )
        reached = self.reached
        result = RunResult(
            run_id=self.run_id,
            workload=config.workload,
            optimizer=config.optimizer,
            steps=config.steps,
            final_loss=last["train_loss"],
            metric=workload.metric,
            metric_value=last[workload.metric],
            test_loss=last["test_loss"],
            train_seconds=self.train_seconds,
            time_to_target=reached[0] if reached else None,
            step_to_target=reached[1] if reached else None,
            out_dir=str(self.out),
            evaluations=self.evaluations,
            loop_seconds=loop_seconds,
            outside_clock_seconds=self.outside,
            skipped_steps=self.skipped,
        )
        store.finish_run(
            self.run_id,
            extra={"target": workload.target, "skipped_steps": self.skipped},
            steps_done=config.steps,
            final_loss=result.final_loss,
            metric=result.metric,
            metric_value=result.metric_value,
            test_loss=result.test_loss,
            train_seconds=self.train_seconds,
            time_to_target=result.time_to_target,
            step_to_target=result.step_to_target,
        )
        store.close()
        self.log.write("end", **result.to_json())
        self.log.close()
        save_checkpoint({"model": self.model.state_dict(), "step": config.steps},
                        self.out / MODEL)
        atomic_write_bytes(self.out / RESULT, json.dumps(result.to_json(), indent=1).encode())
        return result


class _progress:
    """A rich progress bar on an interactive stderr; nothing otherwise."""

    def __init__(self, config: TrainConfig, start: int, run: SingleRun) -> None:
        self._run = run
        show = config.progress if config.progress is not None else sys.stderr.isatty()
        self._bar: Any = None
        if show:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(f"{config.workload} · {config.optimizer}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} · loss {task.fields[loss]}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._task = self._bar.add_task("train", total=config.steps, completed=start, loss="-")

    def __enter__(self) -> Any:
        if self._bar is not None:
            self._bar.start()
            self._run.bar = lambda done, loss: self._bar.update(
                self._task, completed=done, loss=f"{loss:.4f}"
            )
        return self._run.bar

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
