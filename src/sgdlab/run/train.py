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

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch

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


class EpochSampler:
    """Batch ``step`` of a run: slice ``step % per_epoch`` of epoch ``step // per_epoch``'s
    permutation, drawn from a generator seeded by (seed, epoch). Incomplete batches are dropped."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if batch_size > n:
            raise ConfigError(f"invalid batch-size: {batch_size} exceeds the {n} training samples")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]


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


_warmed_up = False


def _warm_up_torch() -> None:
    """Pay torch's one-time lazy imports before the clock starts.

    The first ``Optimizer.step`` of a process imports torch's compiler stack (over a second on
    our machines); charged to the first run's clock it would make whichever optimizer runs
    first look slow. A throwaway step on a scratch parameter draws no random number.
    """
    global _warmed_up
    if not _warmed_up:
        scratch = torch.nn.Parameter(torch.zeros(1))
        scratch.grad = torch.zeros(1)
        torch.optim.SGD([scratch], lr=0.0).step()
        _warmed_up = True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(
    config: TrainConfig, workload: Workload, device: torch.device
) -> tuple[torch.nn.Module, torch.optim.Optimizer, DiminishingLR | None]:
    model = workload.make_model(config.seed).to(device)
    opt = load_optimizer(
        config.optimizer, model.parameters(), lr=config.lr, **config.optimizer_options
    )
    sched = None
    if config.schedule == "diminishing":
        mu = config.mu if config.mu is not None else workload.mu
        L = config.L if config.L is not None else workload.L
        if mu is None or L is None:
            raise ConfigError(
                f"--schedule diminishing needs --mu and --L: "
                f"workload {workload.name!r} is not convex"
            )
        sched = DiminishingLR(opt, mu=mu, L=L, alpha=config.alpha)
    return model, opt, sched


def train(config: TrainConfig, workload: Workload | None = None) -> RunResult:
    """Run ``config`` to its last step (or resume it) and record it; see the module doc."""
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA device is available")
    if workload is None:
        workload = get_workload(config.workload, **config.workload_options)
    torch.manual_seed(config.seed)
    model, opt, sched = _build(config, workload, device)
    sampler = EpochSampler(workload.num_train, config.batch_size, config.seed)
    out = resumable_run_dir(config.out_dir()) if config.resume else new_run_dir(config.out_dir())
    ckpt_path = out / CHECKPOINT

    store = ResultStore(config.db)
    start, train_seconds, log_offset, run_id = 0, 0.0, None, 0
    reached: tuple[float, int] | None = None
    skipped = consecutive = 0  # steps skipped under --on-nonfinite skip: in all, and in a row
    last_good: int | None = None  # the step of the newest checkpoint on disk
    checked_loadable = False  # whether a checkpoint of this optimizer's state can be read back
    if config.resume:
        state = load_checkpoint(ckpt_path)
        if state.get("key") != config.key():
            raise CheckpointError(
                f"checkpoint {ckpt_path} belongs to another configuration; "
                "resume with the arguments of the run that wrote it"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, train_seconds, log_offset = (
            state["step"],
            state["train_seconds"],
            state["log_offset"],
        )
        reached = (
            (float(state["reached"][0]), int(state["reached"][1])) if state["reached"] else None
        )
        run_id = state["run_id"]
        skipped = int(state.get("skipped_steps", 0))
        consecutive = int(state.get("consecutive_skips", 0))
        last_good, checked_loadable = start, True
        if store.has_run(run_id):
            store.resume_run(run_id, start)
        else:
            run_id = 0
    if not run_id:
        run_id = store.start_run(
            workload=config.workload,
            optimizer=config.optimizer,
            config=config.to_json(),
            versions=versions(),
            machine=machine(config.device),
            suite=config.suite,
            out_dir=str(out),
        )

    log = EventLog(out / EVENTS, log_offset)
    if config.resume:
        log.write("resume", step=start, run_id=run_id)
    else:
        log.write("start", run_id=run_id, config=config.to_json(), versions=versions())
    eval_every = config.eval_every or max(1, config.steps // 10)
    log_every = config.log_every or max(1, config.steps // 200)
    evaluations: list[dict[str, float]] = []
    samples: list[tuple[int, float, float]] = []

    x = y = torch.empty(0)
    guard = FiniteGuard(model, device)
    evaluated: list[float] = []  # the loss of each closure evaluation of the current step

    def closure() -> Any:  # torch types closures as returning float; ours return the loss tensor
        opt.zero_grad(set_to_none=True)
        loss = workload.loss(model, x, y)
        loss.backward()
        try:  # raises NonFinite before anything uses the gradient
            evaluated.append(guard.check(loss))
        except NonFinite as exc:
            if evaluated:  # L-BFGS and the like: the step had moved the iterate already
                exc.what += f" (evaluation {len(evaluated) + 1} of the step)"
            raise
        return loss

    def evaluate(step: int) -> None:
        nonlocal reached
        values = workload.evaluate(model, device)
        row = {"step": step, "train_seconds": train_seconds, **values}
        evaluations.append(row)
        store.add_evaluation(run_id, step, train_seconds, values, workload.metric)
        log.write("eval", **row)
        if reached is None and values[workload.metric] >= workload.target:
            reached = (train_seconds, step)

    def checkpoint(step: int) -> None:
        nonlocal last_good, checked_loadable
        model_state, opt_state = model.state_dict(), opt.state_dict()
        bad = nonfinite_state(model, opt, model_state=model_state, optimizer_state=opt_state)
        if bad is not None:
            diverge(step, step, f"{bad}, found before writing its checkpoint")
        state = {
            "key": config.key(),
            "step": step,
            "run_id": run_id,
            "train_seconds": train_seconds,
            "model": model_state,
            "optimizer": opt_state,
            "scheduler": sched.state_dict() if sched is not None else None,
            "rng": torch.get_rng_state(),
            "reached": list(reached) if reached else None,
            "skipped_steps": skipped,
            "consecutive_skips": consecutive,
        }
        if not checked_loadable:
            why = unloadable_state(state)
            if why is not None:
                raise CheckpointError(
                    f"optimizer {config.optimizer} keeps {why} in its state, which a checkpoint "
                    "cannot hold (read with weights_only=True): it could never be resumed; "
                    "run it without --checkpoint-every"
                )
            checked_loadable = True
        store.add_samples(run_id, samples)
        samples.clear()
        log.write("checkpoint", step=step)
        state["log_offset"] = log.offset()
        save_checkpoint(state, ckpt_path)
        last_good = step

    def diverge(step: int, steps_done: int, what: str) -> NoReturn:
        """Mark the run diverged and stop, naming the step, the culprit and the checkpoint."""
        store.add_samples(run_id, samples)
        where = (
            f"last good checkpoint: {ckpt_path} (step {last_good})"
            if last_good is not None
            else "no checkpoint was written (see --checkpoint-every)"
        )
        log.write("diverged", step=step, what=what, checkpoint=last_good)
        log.close()
        store.finish_run(
            run_id, status="diverged", steps_done=steps_done, extra={"skipped_steps": skipped}
        )
        store.close()
        raise DivergenceError(
            f"training diverged at step {step}: {what} (optimizer {config.optimizer}, "
            f"lr {config.lr}); {where}"
        )

    # torch's first-order optimizers evaluate a closure exactly once, before their update: for
    # them calling it here is the same computation without the per-step closure machinery, and
    # the gradient is checked before step() so a skipped step needs nothing put back. Any
    # other optimizer may change its state before a closure fails the check: under ``skip``
    # the runner snapshots model and optimizer before each of its steps.
    single_pass = type(opt) in SINGLE_PASS_OPTIMIZERS
    snapshot_each_step = config.on_nonfinite == "skip" and not single_pass
    model.train()
    if start == 0:
        evaluate(0)  # where every curve starts
    _warm_up_torch()
    loop_start = time.perf_counter()
    outside = 0.0  # evaluation and checkpoint time, for the harness-overhead benchmark
    with _progress(config, start) as bar:
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            done = step + 1  # steps are numbered from 1, as in the log and the checkpoints
            x, y = workload.batch(sampler.indices(step), device)
            evaluated.clear()
            before = Snapshot(model, opt) if snapshot_each_step else None
            try:
                if single_pass:
                    loss = closure()
                    opt.step()
                else:
                    loss = opt.step(closure)
            except NonFinite as exc:
                if config.on_nonfinite == "stop":
                    diverge(done, step, exc.what)
                if before is not None:
                    before.restore(model, opt)
                skipped, consecutive = skipped + 1, consecutive + 1
                log.write("skip", step=done, what=exc.what, in_a_row=consecutive)
                if consecutive >= MAX_CONSECUTIVE_SKIPS:
                    diverge(
                        done,
                        step,
                        f"{exc.what}, {consecutive} steps in a row skipped "
                        "(the limit of --on-nonfinite skip)",
                    )
                loss = None
            else:
                consecutive = 0
                if sched is not None:
                    sched.step()
            _sync(device)
            train_seconds += time.perf_counter() - t0
            if loss is not None and (done % log_every == 0 or done == config.steps):
                value = evaluated[0] if evaluated else float(torch.as_tensor(loss).detach())
                samples.append((done, train_seconds, value))
                log.write(
                    "step",
                    step=done,
                    loss=value,
                    train_seconds=train_seconds,
                    lr=opt.param_groups[0]["lr"],
                )
                bar(done, value)
            if done % eval_every == 0 or done == config.steps:
                t1 = time.perf_counter()
                evaluate(done)
                outside += time.perf_counter() - t1
            if (
                config.checkpoint_every
                and done % config.checkpoint_every == 0
                and done < config.steps
            ):
                t1 = time.perf_counter()
                checkpoint(done)
                outside += time.perf_counter() - t1
    loop_seconds = time.perf_counter() - loop_start
    bad = nonfinite_state(model)
    if bad is not None:  # an optimizer can make a NaN from finite gradients on the last step
        diverge(config.steps, config.steps, f"{bad}, found at the end of the run")

    store.add_samples(run_id, samples)
    last = (
        evaluations[-1]
        if evaluations
        else {"step": config.steps, **workload.evaluate(model, device)}
    )
    result = RunResult(
        run_id=run_id,
        workload=config.workload,
        optimizer=config.optimizer,
        steps=config.steps,
        final_loss=last["train_loss"],
        metric=workload.metric,
        metric_value=last[workload.metric],
        test_loss=last["test_loss"],
        train_seconds=train_seconds,
        time_to_target=reached[0] if reached else None,
        step_to_target=reached[1] if reached else None,
        out_dir=str(out),
        evaluations=evaluations,
        loop_seconds=loop_seconds,
        outside_clock_seconds=outside,
        skipped_steps=skipped,
    )
    store.finish_run(
        run_id,
        extra={"target": workload.target, "skipped_steps": skipped},
        steps_done=config.steps,
        final_loss=result.final_loss,
        metric=result.metric,
        metric_value=result.metric_value,
        test_loss=result.test_loss,
        train_seconds=train_seconds,
        time_to_target=result.time_to_target,
        step_to_target=result.step_to_target,
    )
    store.close()
    log.write("end", **result.to_json())
    log.close()
    save_checkpoint({"model": model.state_dict(), "step": config.steps}, out / MODEL)
    atomic_write_bytes(out / RESULT, json.dumps(result.to_json(), indent=1).encode())
    return result


class _progress:
    """A rich progress bar on an interactive stderr; nothing otherwise."""

    def __init__(self, config: TrainConfig, start: int) -> None:
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
        if self._bar is None:
            return lambda done, loss: None
        self._bar.start()
        return lambda done, loss: self._bar.update(self._task, completed=done, loss=f"{loss:.4f}")

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
