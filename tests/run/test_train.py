from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sgdlab.checkpoint import load_checkpoint, save_checkpoint
from sgdlab.errors import CheckpointError, ConfigError, DivergenceError
from sgdlab.run.config import TrainConfig
from sgdlab.run.store import ResultStore
from sgdlab.run.train import CHECKPOINT, EVENTS, MODEL, EpochSampler, train

WL = "logreg-breast-cancer"


def _config(tmp_path: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        workload=WL,
        optimizer="sgd",
        lr=0.1,
        steps=60,
        batch_size=16,
        seed=3,
        db=tmp_path / "r.db",
        out=tmp_path / "out",
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _params(run_dir: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(run_dir) / MODEL)["model"]


def test_sampler_is_a_pure_function_of_seed_and_step() -> None:
    a, b = EpochSampler(10, 3, seed=5), EpochSampler(10, 3, seed=5)
    seq = [a.indices(s).tolist() for s in range(7)]
    assert [b.indices(s).tolist() for s in reversed(range(7))][::-1] == seq
    epoch0 = sum(seq[:3], [])
    assert len(set(epoch0)) == 9  # three batches of an epoch are disjoint; one sample dropped
    assert seq[3:6] != seq[0:3]  # a new permutation each epoch
    with pytest.raises(ConfigError, match="exceeds the 10 training samples"):
        EpochSampler(10, 11, seed=0)


def test_same_seed_same_run_and_the_record(tmp_path: Path) -> None:
    r1 = train(_config(tmp_path, eval_every=20))
    r2 = train(_config(tmp_path, eval_every=20))
    assert r1.final_loss == r2.final_loss and r1.run_id != r2.run_id
    assert r1.out_dir != r2.out_dir  # a second run never writes over the first
    for a, b in zip(_params(r1.out_dir).values(), _params(r2.out_dir).values(), strict=True):
        assert torch.equal(a, b)
    assert [e["step"] for e in r1.evaluations] == [0, 20, 40, 60]
    assert r1.metric == "accuracy" and 0.5 < r1.metric_value <= 1.0
    with ResultStore(tmp_path / "r.db") as store:
        (row, _) = store.runs()
        assert row.status == "finished" and row.final_loss == r1.final_loss
        assert [e[0] for e in store.evaluations(row.id)] == [0, 20, 40, 60]
        assert store.samples(row.id)[-1][0] == 60
        assert row.versions["torch"] == torch.__version__
    events = [json.loads(line) for line in (Path(r1.out_dir) / EVENTS).read_text().splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"


def test_another_seed_gives_another_run(tmp_path: Path) -> None:
    assert train(_config(tmp_path)).final_loss != train(_config(tmp_path, seed=4)).final_loss


def test_clock_excludes_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from sgdlab.workloads.base import Workload

    real = Workload.evaluate

    def slow(self: Workload, *a: object, **k: object) -> dict[str, float]:
        time.sleep(1.0)
        return real(self, *a, **k)

    monkeypatch.setattr(Workload, "evaluate", slow)
    result = train(_config(tmp_path, steps=20, eval_every=10))
    # Each evaluation sleeps 1 s outside the clock; 20 tiny steps take far less than one of
    # them even on a loaded machine (a 0.3 s margin once failed at load 3).
    assert result.train_seconds < 1.0


def test_checkpoint_resume_in_process_matches_uninterrupted(tmp_path: Path) -> None:
    full = train(_config(tmp_path, out=tmp_path / "a", optimizer="adam", lr=0.01, steps=50))
    cut = _config(
        tmp_path, out=tmp_path / "b", optimizer="adam", lr=0.01, steps=50, checkpoint_every=20
    )
    first = train(cut)
    # Simulate a kill after the step-40 checkpoint: drop the finished marker and model.
    run = Path(first.out_dir)
    (run / "result.json").unlink()
    (run / MODEL).unlink()
    assert load_checkpoint(run / CHECKPOINT)["step"] == 40
    resumed = train(
        _config(
            tmp_path,
            out=tmp_path / "b",
            optimizer="adam",
            lr=0.01,
            steps=50,
            checkpoint_every=20,
            resume=True,
        )
    )
    assert resumed.run_id == first.run_id and resumed.out_dir == first.out_dir
    assert resumed.final_loss == full.final_loss
    for a, b in zip(_params(full.out_dir).values(), _params(resumed.out_dir).values(), strict=True):
        assert torch.equal(a, b)
    with ResultStore(tmp_path / "r.db") as store:
        steps = [e[0] for e in store.evaluations(resumed.run_id)]
    assert steps == sorted(set(steps))


def test_resume_refuses_what_it_cannot_continue(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nothing to resume under"):
        train(_config(tmp_path, resume=True))
    run = Path(train(_config(tmp_path, checkpoint_every=20)).out_dir)
    (run / "result.json").unlink()
    with pytest.raises(CheckpointError, match="belongs to another configuration"):
        train(_config(tmp_path, lr=0.2, checkpoint_every=20, resume=True))
    (run / CHECKPOINT).write_bytes((run / CHECKPOINT).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable"):
        train(_config(tmp_path, checkpoint_every=20, resume=True))


def test_checkpoint_refuses_pickled_objects(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("owned",))

    path = tmp_path / "c.pt"
    torch.save({"format": 1, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    save_checkpoint({"x": torch.ones(2)}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temp file left behind


def test_divergence_stops_with_the_step(tmp_path: Path) -> None:
    with pytest.raises(DivergenceError, match=r"diverged at step \d+: the loss is (nan|inf)"):
        train(_config(tmp_path, lr=1e30, steps=200, log_every=1))
    with ResultStore(tmp_path / "r.db") as store:
        assert store.runs(status="diverged")


def test_diminishing_schedule_uses_the_workload_constants(tmp_path: Path) -> None:
    result = train(_config(tmp_path, schedule="diminishing", steps=30))
    events = [json.loads(x) for x in (Path(result.out_dir) / EVENTS).read_text().splitlines()]
    lrs = [e["lr"] for e in events if e["event"] == "step"]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 0.1
    with pytest.raises(ConfigError, match="only apply with --schedule diminishing"):
        train(_config(tmp_path, mu=0.1))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"steps": 0}, "invalid steps: 0"),
        ({"batch_size": -2}, "invalid batch-size: -2"),
        ({"lr": float("nan")}, "invalid lr: nan"),
        ({"schedule": "cosine"}, "invalid schedule 'cosine'"),
        ({"workload": "nope"}, "unknown workload 'nope'"),
        ({"optimizer": "nope"}, "unknown optimizer 'nope'"),
        ({"device": "tpu"}, "invalid device 'tpu'"),
    ],
)
def test_bad_config_raises_one_clear_line(
    tmp_path: Path, kw: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        train(_config(tmp_path, **kw))
