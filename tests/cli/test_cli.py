from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgdlab.cli import main

TRAIN = ["train", "--workload", "logreg-breast-cancer", "--steps", "40", "--batch-size", "16"]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (
        ["--help"],
        ["train", "--help"],
        ["list", "--help"],
        ["bench", "--help"],
        ["bench", "quick", "--help"],
        ["report", "--help"],
    ):
        code, out, _ = _run(args, capsys)
        assert code == 0 and "Usage" in out, args


def test_train_json_is_the_last_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        [
            *TRAIN,
            "--db",
            str(tmp_path / "r.db"),
            "--out",
            str(tmp_path / "o"),
            "--set",
            "momentum=0.9",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    for key in (
        "workload",
        "optimizer",
        "steps",
        "final_loss",
        "metric",
        "metric_value",
        "train_seconds",
        "run_id",
    ):
        assert key in result
    assert result["steps"] == 40 and result["workload"] == "logreg-breast-cancer"


def test_theory_commands_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _run(
        [
            "theory",
            "sgd-bound",
            "--mu",
            "1",
            "--L",
            "2",
            "--N",
            "1",
            "--w0-dist2",
            "4",
            "--steps",
            "100",
            "--json",
        ],
        capsys,
    )
    rep = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and rep["E"] == 8.0 and rep["final"]["recursion"] <= rep["final"]["bound"]
    code, out, _ = _run(
        [
            "theory",
            "biased-sgd",
            "--case",
            "smooth",
            "--L",
            "2",
            "--m",
            "1",
            "--alpha",
            "0.1",
            "--sigma2",
            "1",
            "--json",
        ],
        capsys,
    )
    rep = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and rep["rho2"] == pytest.approx(1 - 2 * 0.1 + 2 * 4 * 0.01, rel=1e-6)
    code, out, _ = _run(
        [
            "theory",
            "schedule",
            "--case",
            "smooth",
            "--L",
            "2",
            "--m",
            "1",
            "--U0",
            "5",
            "--steps",
            "50",
            "--sigma2",
            "1",
            "--plot",
            str(tmp_path / "s.png"),
            "--json",
        ],
        capsys,
    )
    rep = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and rep["final_bound"] < 5 and (tmp_path / "s.png").stat().st_size > 0


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["list", "--json"], capsys)
    cat = json.loads(out.strip().splitlines()[-1])
    assert code == 0
    names = {w["name"] for w in cat["workloads"]}
    assert {
        "logreg-fmnist",
        "logreg-breast-cancer",
        "sparse-logreg",
        "mlp-mnist",
        "cnn-fmnist",
        "resnet18-cifar10",
    } <= names
    assert {"sgd", "adam", "adamw", "lbfgs"} <= {o["name"] for o in cat["optimizers"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--workload", "nope"], "error: unknown workload 'nope'"),
        ([*TRAIN, "--optimizer", "nope"], "error: unknown optimizer 'nope'"),
        ([*TRAIN, "--lr", "-1"], "error: invalid lr: -1.0"),
        ([*TRAIN, "--lr", "abc"], "error: Invalid value for '--lr'"),
        ([*TRAIN, "--steps", "0"], "error: invalid steps: 0"),
        ([*TRAIN, "--set", "momentum"], "error: Invalid value: --set takes key=value"),
        ([*TRAIN, "--set", "bogus=1"], "error: optimizer 'sgd' takes no hyperparameter bogus"),
        ([*TRAIN, "--set", "momentum=-3"], "error: Invalid momentum value: -3"),
        ([*TRAIN, "--set", "workload.l2=x"], "error: invalid value 'x' for option l2"),
        (
            [*TRAIN, "--set", "workload.zzz=1"],
            "error: workload 'logreg-breast-cancer' has no option zzz",
        ),
        ([*TRAIN, "--resume"], "error: nothing to resume under"),
        (["train", "--nope"], "error: No such option: --nope"),
        (
            ["report", "--db", "/nonexistent/x.db"],
            "error: no results database at /nonexistent/x.db",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    db = tmp_path / "r.db"
    if args[0] == "train":
        args = [*args, "--db", str(db), "--out", str(tmp_path / "o")]
        main([*TRAIN, "--db", str(db), "--out", str(tmp_path / "o")])  # something to protect
        capsys.readouterr()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, out, err = _run(args, capsys)
    assert code == 2
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1, err
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert {p: after[p] for p in before} == before  # nothing existing was overwritten
