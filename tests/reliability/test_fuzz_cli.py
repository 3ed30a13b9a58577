"""Generated bad argv for every ``sgdlab`` command, run in process through ``cli.main``.

Each case takes a command with valid, tiny values for its required options and then breaks
it: one or two options get a bad value (not a number, out of range, an unknown choice, an
absurd size, a path under a regular file or a folder where a file goes), a required option is
left out, an unknown option or a stray argument is added, or an option loses its value. The
command must exit 2 with exactly one ``error: ...`` line on stderr and leave the working
folder (which holds a file and a folder the bad paths point into) byte for byte as it was.

Nothing real may start: stubs in place of process creation (``subprocess.Popen``,
``multiprocessing``'s ``Process.start``, the testbed's ``ip``/``tc`` runner) and of the
suites' training raise :class:`fuzz_helpers.Reached`, so input that got past validation fails
the test instead of training, spawning ranks or touching network namespaces. ``train`` itself
runs for real on two steps, where a missed check is cheap and shows as files left behind.
A few real subprocess runs check that ``python -m sgdlab.cli`` behaves the same.
"""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fuzz_helpers import Reached, assert_one_error_line, chdir, fuzz, run_cli, tree_digest
from hypothesis import given
from hypothesis import strategies as st

from sgdlab.optim import optimizer_names
from sgdlab.workloads.registry import workload_names


def _parses(kind: type, text: str) -> bool:
    try:
        kind(text)
    except (ValueError, OverflowError):
        return False
    return True


GARBAGE = st.one_of(
    st.sampled_from(["abc", "", " ", "1.5.2", "1e", "0x1f", "--", "1,000", "one", "NaNx", "∞"]),
    st.text(max_size=8),
)
# Text that click cannot read as an int / a float (and so never reaches sgdlab's checks).
NOT_INT = st.one_of(GARBAGE, st.sampled_from(["1.5", "1e3", "nan", "inf"])).filter(
    lambda s: not _parses(int, s)
)
NOT_FLOAT = GARBAGE.filter(lambda s: not _parses(float, s))


def ints(*bad: int) -> st.SearchStrategy[str]:
    return st.one_of(NOT_INT, st.sampled_from([str(b) for b in bad]))


def floats(*bad: float | str) -> st.SearchStrategy[str]:
    return st.one_of(NOT_FLOAT, st.sampled_from([str(b) for b in bad]))


NEG_INT = st.integers(-(10**12), -1).map(str)
NAME = st.from_regex(r"[a-z][a-z0-9:_-]{0,14}", fullmatch=True)
BAD_WORKLOAD = NAME.filter(lambda s: s not in workload_names())
BAD_OPTIMIZER = NAME.filter(
    lambda s: s not in optimizer_names() and not s.startswith(("peer:", "prox:"))
) | st.sampled_from(["prox:nope", "peer:", "prox:"])


def choices(*valid: str) -> st.SearchStrategy[str]:
    return st.one_of(NAME, st.sampled_from(["", "CONSTANT", "x"])).filter(lambda s: s not in valid)


FILE_UNDER_FILE = st.sampled_from(["afile/x", "afile/sub/x.db"])
FOLDER_IS_FILE = st.sampled_from(["afile", "afile/sub"])
DB_BAD = st.sampled_from(["adir", "afile/x.db", "afile"])
FLAG = st.just(None)  # an option that takes no value
NANS = ("nan", "inf", "-inf")

Command = tuple[list[str], dict[str, str], dict[str, st.SearchStrategy[Any]]]
# (argv prefix, required options with valid values, options with their bad values)
COMMANDS: dict[str, Command] = {
    "train": (
        ["train"],
        {"--workload": "logreg-breast-cancer", "--steps": "2", "--batch-size": "8"},
        {
            "--workload": BAD_WORKLOAD,
            "--optimizer": BAD_OPTIMIZER,
            "--lr": floats(*NANS, -1, -1e-9),
            "--steps": ints(0, -1) | NEG_INT,
            "--batch-size": ints(0, -3, 10**9),
            "--seed": ints(-1) | NEG_INT,
            "--schedule": choices("constant", "diminishing", "step"),
            "--warmup": floats(*NANS, 1, -0.1),
            "--milestones": floats(*NANS, 0, 1.5),
            "--gamma": floats(*NANS, -1),
            "--mu": floats("1", "0.5"),  # --mu with the constant schedule is an error
            "--L": floats("2"),
            "--alpha": NOT_FLOAT,
            "--eval-every": ints(-1),
            "--checkpoint-every": ints(-1),
            "--device": st.sampled_from(["gpu", "tpu", "cuda", "cuda:abc", "cuda:-1", "", "cpux"]),
            "--threads": ints(-1),
            "--set": st.sampled_from(["novalue", "=1", "nope=1", "momentum", "workload.nope=1",
                                      "workload.l2=abc", "workload.l2=-1", "lr=0.1", "eps=1"]),
            "--out": FOLDER_IS_FILE,
            "--db": DB_BAD,
            "--resume": FLAG,
        },
    ),
    "hogwild": (
        ["hogwild"],
        {"--workload": "logreg-breast-cancer", "--workers": "1", "--steps": "4"},
        {
            "--workload": BAD_WORKLOAD,
            "--workers": ints(0, -1, 10**6),
            "--steps": ints(0, -5),
            "--lr": floats(*NANS, -1, 0),
            "--schedule": choices("constant", "diminishing"),
            "--mu": NOT_FLOAT,
            "--alpha": NOT_FLOAT,
            "--batch-size": ints(0, -1, 10**9),
            "--seed": ints(-1),
            "--set": st.sampled_from(["momentum=0.9", "workload.nope=1", "novalue",
                                      "workload.l2=x"]),
            "--device": st.sampled_from(["gpu", "cuda", "cuda:0", "", "cuda:abc"]),
        },
    ),
    "dist": (
        ["dist"],
        {"--algo": "local", "--workload": "logreg-breast-cancer", "--steps": "2"},
        {
            "--algo": choices("sync", "local", "overlap", "easgd", "cocod"),
            # Not generated (the ranks find them, after spawning): --batch-size larger than a
            # rank's shard, --addr "" (see benchmarks/results/fuzz.md).
            "--world-size": ints(0, -2, 257, 1000000),
            "--workload": BAD_WORKLOAD,
            "--optimizer": BAD_OPTIMIZER,
            "--lr": floats(*NANS, -1),
            "--batch-size": ints(0, -1),
            "--tau": ints(0, -1),
            "--alpha": floats(*NANS, -0.5, 1.5),
            "--anchor-momentum": floats(*NANS, -0.5, 1.0, 2),
            "--steps": ints(0, -1),
            "--seed": ints(-1),
            "--partition": st.sampled_from(["dirichlet", "dirichlet:-1", "dirichlet:nan",
                                            "dirichlet:x", "iid:1", "noniid", ""]),
            "--bandwidth-mbps": floats(*NANS, -1),
            "--link-steps": floats(*NANS, -1),
            "--latency-ms": floats(*NANS, -1),
            "--straggler-prob": floats(*NANS, -0.1, 1.5),
            "--straggler-slowdown": floats(*NANS, 0.5, 0, -1),
            "--eval-every": ints(-1),
            "--set": st.sampled_from(["lr=0.1", "nope=1", "momentum=abc", "novalue",
                                      "workload.nope=1", "momentum=2"]),
            "--timeout": floats(*NANS, 0, -1),
            "--addr": st.sampled_from(["not an address", "999.1.1.1", "::1::", "-"]),
        },
    ),
    "sgd-bound": (
        ["theory", "sgd-bound"],
        {"--mu": "1", "--L": "2", "--N": "1", "--w0-dist2": "4", "--steps": "10"},
        {
            "--mu": floats(*NANS, 0, -1, 5),  # 5 > L
            "--L": floats(*NANS, 0, -1, 0.5),  # 0.5 < mu
            "--N": floats(*NANS, -1),
            "--w0-dist2": floats(*NANS, -1),
            "--steps": ints(-1) | NEG_INT,
            "--schedule": choices("diminishing", "constant"),
            "--alpha": floats(*NANS, 1, 0.5, -2),
            "--E": floats(*NANS, 0, -1, 1e-9),
            "--eta": floats(*NANS, -1),
            "--D": ints(0, -1),
            "--plot": FILE_UNDER_FILE | st.just("adir"),
        },
    ),
    "biased-sgd": (
        ["theory", "biased-sgd"],
        {"--case": "smooth", "--L": "2", "--m": "1", "--alpha": "0.1"},
        {
            "--case": choices("smooth", "smooth-convex", "bounded"),
            "--L": floats(*NANS, 0, -1, 0.5),
            "--m": floats(*NANS, 0, -1, 5),
            "--alpha": floats(*NANS, 0, -1),
            "--delta": floats(*NANS, -1),
            "--c": floats(*NANS, -1),
            "--sigma2": floats(*NANS, -1),
            "--beta": floats("1", "-1", *NANS),  # beta/K apply only to case 'bounded'
            "--K": floats("1", *NANS),
            "--U": floats(*NANS, -1),
            "--solver": choices("clarabel", "scs"),
        },
    ),
    "schedule": (
        ["theory", "schedule"],
        {"--case": "smooth", "--L": "2", "--m": "1", "--U0": "1", "--steps": "3"},
        {
            "--case": choices("smooth", "smooth-convex", "bounded"),
            "--L": floats(*NANS, 0, -1),
            "--m": floats(*NANS, 0, -1, 5),
            "--U0": floats(*NANS, -1),
            "--steps": ints(0, -1),
            "--delta": floats(*NANS, -1),
            "--c": floats(*NANS, -1),
            "--sigma2": floats(*NANS, -1),
            "--solver": choices("clarabel", "scs"),
            "--plot": FILE_UNDER_FILE | st.just("adir"),
        },
    ),
    "bench-quick": (["bench", "quick"], {}, {"--db": DB_BAD, "--out": FOLDER_IS_FILE}),
    "bench-overlap": (
        ["bench", "overlap"], {},
        {"--grid": choices("small", "full"), "--out": FOLDER_IS_FILE},
    ),
    "bench-smallbatch": (
        ["bench", "smallbatch"], {},
        {
            "--workloads": BAD_WORKLOAD | st.sampled_from(["", ",", "cnn-fmnist,,"]),
            "--batch-sizes": st.sampled_from(["x", "0", "-1", "", "8,x", "1.5"]),
            "--subset": ints(0, -1),
            "--validation": ints(-1),
            "--epochs": ints(0, -1),
            "--seeds": ints(0, -1),
            "--lams": st.sampled_from(["-1", "nan", "x", "0.1,inf"]),
            "--ablate-batch-sizes": st.sampled_from(["x", "0", "-8"]),
            "--db": DB_BAD,
            "--out": FOLDER_IS_FILE,
        },
    ),
    "bench-mlbfgs": (
        ["bench", "mlbfgs"], {},
        {
            "--workload": BAD_WORKLOAD,
            "--contender": NAME.filter(lambda s: s not in (
                "mlbfgs", "sgd-momentum", "adam", "adamw", "lbfgs", "lbfgs-iter4", "soap",
                "shampoo")),
            "--seeds": ints(0, -1),
            "--batch-size": ints(0, -1),
            "--steps-scale": floats(*NANS, 0, -1),
            "--cost-rounds": ints(-1),
            "--db": DB_BAD,
            "--out": FOLDER_IS_FILE,
        },
    ),
    "bench-hogwild": (["bench", "hogwild"], {}, {"--seeds": ints(0, -1), "--out": FOLDER_IS_FILE}),
    "bench-biased-sgd": (
        ["bench", "biased-sgd"], {},
        {
            "--workload": BAD_WORKLOAD | st.just("cnn-fmnist"),
            "--l2": floats(*NANS, -1),
            "--rows": ints(0, -1),
            "--case": st.sampled_from(["bounded", "nope", ""]),
            "--delta": floats(*NANS, -1),
            "--c": floats(*NANS, -1),
            "--steps": ints(0, -1),
            "--seeds": ints(0, -1),
            "--alpha": floats(*NANS, 0, -1),
            "--plot": FILE_UNDER_FILE,
        },
    ),
    "report": (
        ["report"], {},
        {"--db": st.sampled_from(["missing.db", "adir", "afile", "afile/x.db"])},
    ),
    "list": (["list"], {}, {}),
    "testbed-up": (
        ["testbed", "up"],
        {"--hosts": "2", "--name": "fz", "--state-dir": "adir"},
        {
            "--hosts": ints(0, -1, 1, 10**6),
            "--rate": st.sampled_from(["fast", "-1mbit", "", "0mbit", "1zbit", "nanmbit"]),
            "--burst": ints(0, -1),
            "--latency-ms": floats(*NANS, -1, 0),
            "--delay-ms": floats(*NANS, -1),
            "--name": st.sampled_from(["bad name!", "x" * 40, "", "a/b", "-"]),
            "--state-dir": FOLDER_IS_FILE,
        },
    ),
    "testbed-down": (
        ["testbed", "down"], {"--state-dir": "adir"},
        {"--name": st.sampled_from(["bad name!", "x" * 40, "", "a/b"])},
    ),
    "testbed-status": (
        ["testbed", "status"], {"--state-dir": "adir"},
        {"--name": st.sampled_from(["bad name!", "x" * 40, "", "a/b", "nosuchtb"]),
         "--state-dir": FOLDER_IS_FILE},
    ),
}


# The options without a default (click refuses a command line without them).
MUST = {
    "train": {"--workload"}, "hogwild": {"--workload"}, "dist": {"--algo"},
    "sgd-bound": {"--mu", "--L", "--N", "--w0-dist2", "--steps"},
    "biased-sgd": {"--case", "--L", "--m", "--alpha"},
    "schedule": {"--case", "--L", "--m", "--U0", "--steps"},
    "testbed-up": {"--hosts"},
}


@st.composite
def bad_argv(draw: st.DrawFn, commands: list[str] | None = None) -> list[str]:
    """A command line with at least one thing wrong in it."""
    name = draw(st.sampled_from(commands or sorted(COMMANDS)))
    prefix, required, bad = COMMANDS[name]
    modes = ["value"] * 4 * bool(bad) + ["unknown-option", "stray-argument"]
    modes += ["missing-required"] * bool(MUST.get(name)) + ["no-value"] * bool(required or bad)
    mode = draw(st.sampled_from(modes))
    options: dict[str, str | None] = dict(required)
    if mode == "value":
        for opt in draw(st.lists(st.sampled_from(sorted(bad)), min_size=1, max_size=2,
                                 unique=True)):
            options[opt] = draw(bad[opt])
    elif mode == "missing-required":
        del options[draw(st.sampled_from(sorted(MUST[name])))]
    pairs = list(options.items())
    pairs = draw(st.permutations(pairs)) if pairs else []
    argv = list(prefix)
    for opt, value in pairs:
        argv += [opt] if value is None else [opt, value]
    if draw(st.booleans()):
        argv.append("--json")
    if mode == "unknown-option":
        argv.insert(draw(st.integers(len(prefix), len(argv))),
                    draw(st.from_regex(r"--[a-z][a-z-]{0,10}", fullmatch=True).filter(
                        lambda o: o not in bad and o not in required
                        and o not in ("--json", "--help", "--testbed", "--allow-cuda",
                                      "--egress-only", "--no-egress-only", "--resume",
                                      "--no-resume", "--no-testbed", "--no-allow-cuda"))))
    elif mode == "stray-argument":
        argv.append(draw(st.from_regex(r"[a-z0-9][a-z0-9_.]{0,8}", fullmatch=True)))
    elif mode == "no-value":
        takes_value = [o for o in {**required, **bad} if o not in bad or bad[o] is not FLAG]
        argv.append(draw(st.sampled_from(sorted(takes_value))))
    return argv


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise Reached("work would have started: the bad input got past validation")


@contextlib.contextmanager
def stubbed() -> Iterator[None]:
    """No processes, no training in the suites, no ip/tc: see the module docstring."""
    import sgdlab.experiments.mlbfgs
    import sgdlab.experiments.smallbatch
    import sgdlab.experiments.suites
    import sgdlab.testbed.netns

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "Popen", _refuse)
        mp.setattr(multiprocessing.process.BaseProcess, "start", _refuse)
        mp.setattr(sgdlab.testbed.netns, "_run", _refuse)
        for module in (sgdlab.experiments.suites, sgdlab.experiments.smallbatch,
                       sgdlab.experiments.mlbfgs):
            mp.setattr(module, "train", _refuse)
        yield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder holding a file and a folder for the bad paths to point into."""
    root = tmp_path_factory.mktemp("cli-cwd")
    (root / "afile").write_bytes(b"the user's file, not a database\n")
    (root / "adir").mkdir()
    (root / "adir" / "keep.txt").write_bytes(b"keep me\n")
    return root


def _entries(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def check_bad_argv(argv: list[str], workdir: Path) -> None:
    before, names = tree_digest(workdir), _entries(workdir)
    with chdir(workdir), stubbed():
        try:
            code, _, err = run_cli(argv)
        except Reached:
            pytest.fail(f"{argv}: got past validation to real work")
    assert_one_error_line(code, err, argv)
    assert tree_digest(workdir) == before, f"{argv} changed a file"
    assert _entries(workdir) == names, f"{argv} left {_entries(workdir) - names} behind"


@fuzz(ci=120)
@given(argv=bad_argv())
def test_bad_argv_exits_2_with_one_error_line(
    argv: list[str], workdir: Path
) -> None:
    check_bad_argv(argv, workdir)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--workload", "logreg-breast-cancer", "--steps", "0"],
        ["train", "--workload", "nope"],
        ["dist", "--algo", "sync", "--world-size", "0"],
        ["theory", "sgd-bound", "--mu", "-1", "--L", "1", "--N", "1", "--w0-dist2", "1",
         "--steps", "3"],
        ["report", "--db", "missing.db"],
        ["nosuchcommand"],
        ["train", "--nope"],
    ],
)
def test_out_of_process_equals_in_process(argv: list[str], workdir: Path) -> None:
    """``python -m sgdlab.cli`` prints the same one line and exits 2, as ``main`` does."""
    with chdir(workdir):
        code, _, err = run_cli(argv)
    src = Path(__file__).resolve().parents[2] / "src"
    path = os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    # ``python -m sgdlab`` is the same command (it once failed: the package had no __main__)
    module = "sgdlab" if argv == ["nosuchcommand"] else "sgdlab.cli"
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (code, err), argv
    assert_one_error_line(proc.returncode, proc.stderr, argv)
