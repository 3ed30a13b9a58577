"""Security, each promise against the real thing: nothing untrusted is unpickled (hostile
checkpoints, MNIST and CIFAR-10 files whose payload would create a marker file, which must never
appear), the rendezvous binds where it is told, and SQLite sees values only as bound parameters.

The launcher's own checks (a planted result file, the sockets a local launch listens on) are in
``tests/distributed/test_launch.py``.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import pickle
import sqlite3
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sgdlab.checkpoint import load_checkpoint
from sgdlab.cli import main
from sgdlab.errors import CheckpointError, DataError
from sgdlab.run.store import ResultStore
from sgdlab.workloads import datasets
from sgdlab.workloads._safe_pickle import safe_load
from sgdlab.workloads.datasets import load_dataset

SRC = Path(__file__).resolve().parents[1] / "src" / "sgdlab"
AUDITED_UNPICKLER = SRC / "workloads" / "_safe_pickle.py"
# Pickle protocols 0-2 name the builtins module as Python 2 did.
REFUSED_EXEC = r"refusing to unpickle global (builtins|__builtin__)\.exec"


class Planted:
    """Unpickling this runs ``exec``, which creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def planted(marker: Path, protocol: int = 2) -> bytes:
    """A pickle that creates ``marker`` when a plain unpickler reads it (checked here)."""
    blob = pickle.dumps(Planted(marker), protocol=protocol)
    live = marker.with_name(marker.name + ".live")
    pickle.loads(pickle.dumps(Planted(live), protocol=protocol))
    assert live.exists(), "the planted payload must really run under pickle.loads"
    live.unlink()
    return blob


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SGDLAB_DATA", raising=False)
    monkeypatch.setenv("SGDLAB_CACHE", str(tmp_path / "cache"))


# --- checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_hostile_checkpoint_is_refused_unrun(tmp_path: Path, kind: str) -> None:
    marker, path = tmp_path / "marker", tmp_path / "checkpoint.pt"
    if kind == "pickle":
        path.write_bytes(planted(marker))
    else:
        planted(marker)  # the payload is live
        torch.save({"format": 1, "model": Planted(marker)}, path)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is unreadable"):
        load_checkpoint(path)
    assert not marker.exists()


def test_train_resume_refuses_a_hostile_checkpoint_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--workload", "logreg-breast-cancer", "--steps", "20", "--batch-size", "16",
            "--checkpoint-every", "10", "--out", str(tmp_path / "out"), "--db",
            str(tmp_path / "r.db")]
    assert main(args) == 0
    (run,) = (tmp_path / "out").rglob("checkpoint.pt")
    (run.parent / "result.json").unlink()  # as if the run had been killed
    marker = tmp_path / "marker"
    run.write_bytes(planted(marker))
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(run) in err, err
    assert not marker.exists()


# --- data sets --------------------------------------------------------------------------------


def fake_mnist_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blob: bytes) -> Path:
    """An installed-looking ``mnist`` package, first on sys.path, shipping ``blob``."""
    site = tmp_path / "site"
    (site / "mnist" / "data").mkdir(parents=True)
    (site / "mnist" / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    path = site / "mnist" / "data" / "mnist.pkl.gz"
    path.write_bytes(blob)
    monkeypatch.delitem(sys.modules, "mnist", raising=False)
    monkeypatch.syspath_prepend(str(site))
    return path


def test_an_mnist_file_with_the_wrong_sha256_is_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    path = fake_mnist_wheel(tmp_path, monkeypatch, gzip.compress(planted(marker)))
    with pytest.raises(DataError, match=f"{path}: SHA-256 .* is not the pinned"):
        load_dataset("mnist", cache_dir=tmp_path / "cache")
    assert not marker.exists()
    # Were the pinned digest ever to match a hostile file, the restricted unpickler still refuses.
    monkeypatch.setattr(datasets, "MNIST_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(DataError, match=REFUSED_EXEC):
        load_dataset("mnist", cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_a_cifar_archive_with_a_hostile_batch_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("data_batch_1", "test_batch"):
            blob = planted(marker)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError, match="data_batch_1: " + REFUSED_EXEC):
        load_dataset("cifar10", cache_dir=tmp_path / "cache", path=archive)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_the_restricted_unpickler_refuses_a_payload_in_every_protocol(
    tmp_path: Path, protocol: int
) -> None:
    marker = tmp_path / "marker"
    with pytest.raises(DataError, match=REFUSED_EXEC):
        safe_load(io.BytesIO(planted(marker, protocol)), source="batch")
    assert not marker.exists()


def test_the_restricted_unpickler_refuses_a_global_reached_through_copyreg(tmp_path: Path) -> None:
    import copyreg

    marker, code = tmp_path / "marker", 0x7FFF_FF00
    copyreg.add_extension("builtins", "exec", code)  # EXT4 opcode instead of a GLOBAL
    try:
        blob = planted(marker)
    finally:
        copyreg.remove_extension("builtins", "exec", code)
    assert b"\x84" in blob  # EXT4
    copyreg.add_extension("builtins", "exec", code)
    try:
        with pytest.raises(DataError, match=REFUSED_EXEC):
            safe_load(io.BytesIO(blob), source="batch")
    finally:
        copyreg.remove_extension("builtins", "exec", code)
    assert not marker.exists()


# --- no unaudited deserialiser anywhere in src/ -------------------------------------------------

UNPICKLERS = {
    f"{module}.{name}"
    for module in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle")
    for name in ("load", "loads", "Unpickler")
} | {"marshal.load", "marshal.loads", "shelve.open", "joblib.load", "pandas.read_pickle",
     "torch.serialization.add_safe_globals", "torch.serialization.safe_globals"}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}
NUMPY_LOADS = {"numpy.load"}


def _aliases(tree: ast.Module) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                names[a.asname or top] = a.name if a.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _is(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_loads(source: str, *, audited: bool = False) -> list[str]:
    """Every unaudited deserialisation in ``source``: an unpickler (allowed in the audited
    module only), ``torch.load`` without ``weights_only=True``, ``np.load`` with pickles."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    calls = {id(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Name | ast.Attribute):
            continue
        name = _dotted(node, aliases)
        call = calls.get(id(node))
        kw = {k.arg: k.value for k in call.keywords} if call is not None else {}
        if name in UNPICKLERS and not audited:
            found.append(f"line {node.lineno}: {name}")
        elif name in TORCH_LOADS and not (call is not None and _is(kw.get("weights_only"), True)):
            found.append(f"line {node.lineno}: {name} without weights_only=True")
        elif name in NUMPY_LOADS and ("allow_pickle" in kw and not _is(kw["allow_pickle"], False)
                                      or call is None or call.args[2:]):
            found.append(f"line {node.lineno}: {name} that may allow pickles")
    return found


def src_files() -> Iterator[Path]:
    yield from sorted(SRC.rglob("*.py"))


def test_nothing_in_src_deserialises_without_the_audited_safeguards() -> None:
    found = {
        str(p.relative_to(SRC)): hits
        for p in src_files()
        if (hits := unsafe_loads(p.read_text(), audited=p == AUDITED_UNPICKLER))
    }
    assert found == {}
    assert "pickle.Unpickler" in AUDITED_UNPICKLER.read_text()  # the one audited module


@pytest.mark.parametrize(("snippet", "hits"), [
    ("import pickle\npickle.loads(b'')", 1),
    ("from pickle import loads as l\nl(b'')", 1),
    ("import pickle as p\nclass U(p.Unpickler): pass", 1),
    ("import torch\ntorch.load('f')", 1),
    ("import torch\ntorch.load('f', weights_only=False)", 1),
    ("from torch import load\nload('f', weights_only=flag)", 1),
    ("import torch\nf = torch.load", 1),
    ("import torch\ntorch.serialization.add_safe_globals([object])", 1),
    ("import numpy as np\nnp.load('f', allow_pickle=True)", 1),
    ("import numpy as np\nnp.load('f', None, True)", 1),
    ("import torch\ntorch.load('f', map_location='cpu', weights_only=True)", 0),
    ("import numpy as np\nnp.load('f')\nnp.load('f', allow_pickle=False)", 0),
])
def test_the_deserialiser_scan_finds_what_it_must(snippet: str, hits: int) -> None:
    assert len(unsafe_loads(snippet)) == hits, unsafe_loads(snippet)


# --- the rendezvous -----------------------------------------------------------------------------


def test_init_from_env_binds_the_store_to_master_addr(monkeypatch: pytest.MonkeyPatch) -> None:
    from sgdlab.distributed import comm

    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(comm, "init_process_group", lambda *a: seen.append(a))
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    comm.init_from_env(timeout_s=5.0)
    assert seen == [(1, 2, "127.0.0.1", 29511, 5.0)]
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(ValueError, match="Invalid environment: MASTER_ADDR is not set"):
        comm.init_from_env()


# --- SQLite: values only as bound parameters ----------------------------------------------------

SQL_METHODS = {"execute", "executemany", "executescript"}


def _module_constants(tree: ast.Module) -> set[str]:
    """Module-level names assigned once, from literals and earlier such names only."""
    counts: dict[str, int] = {}
    for node in ast.walk(tree):
        for target in getattr(node, "targets", []) + [getattr(node, "target", None)]:
            if isinstance(target, ast.Name):
                counts[target.id] = counts.get(target.id, 0) + 1
    consts: set[str] = set()
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 \
            else node.target if isinstance(node, ast.AnnAssign) else None
        value = getattr(node, "value", None)
        if (isinstance(target, ast.Name) and counts[target.id] == 1 and value is not None
                and _constant_sql(value, consts)):
            consts.add(target.id)
    return consts


def _constant_sql(node: ast.AST, consts: set[str], bound: frozenset[str] = frozenset()) -> bool:
    """Whether ``node`` is built only from literals, module constants and comprehension
    variables over them: f-strings, ``+`` and ``str.join`` allowed; no value from a caller."""
    def ok(n: ast.AST, b: frozenset[str] = bound) -> bool:
        return _constant_sql(n, consts, b)

    match node:
        case ast.Constant(value=str() | int() | float() | None):
            return True
        case ast.Name(id=name):
            return name in consts or name in bound
        case ast.Tuple(elts=elts) | ast.List(elts=elts):
            return all(ok(e) for e in elts)
        case ast.BinOp(op=ast.Add(), left=left, right=right):
            return ok(left) and ok(right)
        case ast.JoinedStr(values=values):
            return all(ok(v) for v in values)
        case ast.FormattedValue(value=value, format_spec=None):
            return ok(value)
        case ast.Call(func=ast.Attribute(value=ast.Constant(value=str()), attr="join"),
                      args=[arg], keywords=[]):
            return ok(arg)
        case ast.GeneratorExp(elt=elt, generators=gens) | ast.ListComp(elt=elt, generators=gens):
            names = set(bound)
            for g in gens:
                if g.is_async or g.ifs or not isinstance(g.target, ast.Name) or not ok(g.iter):
                    return False
                names.add(g.target.id)
            return ok(elt, frozenset(names))
    return False


def sql_built_from_values(source: str) -> tuple[list[str], int]:
    """(calls whose SQL is not constant, calls checked) over ``source``."""
    tree = ast.parse(source)
    consts = _module_constants(tree)
    bad, checked = [], 0
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in SQL_METHODS):
            continue
        checked += 1
        kw = {k.arg: k.value for k in node.keywords}
        sql = node.args[0] if node.args else kw.get("sql", kw.get("sql_script"))
        if sql is None or not _constant_sql(sql, consts):
            bad.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return bad, checked


def test_every_sql_statement_in_src_is_a_constant() -> None:
    results = {str(p.relative_to(SRC)): sql_built_from_values(p.read_text()) for p in src_files()}
    assert {f: bad for f, (bad, _) in results.items() if bad} == {}
    assert results["run/store.py"][1] >= 10  # the scan sees the store's statements


@pytest.mark.parametrize(("snippet", "bad"), [
    ("db.execute(f'SELECT * FROM runs WHERE suite = {suite}')", 1),
    ("db.execute('SELECT * FROM runs WHERE suite = ' + suite)", 1),
    ("db.execute('SELECT * FROM runs WHERE suite = {}'.format(suite))", 1),
    ("db.execute('SELECT * FROM runs WHERE suite = %s' % suite)", 1),
    ("Q = 'SELECT 1'\nQ = input()\ndb.execute(Q)", 1),
    ("def f(db, k):\n    q = 'SELECT 1'\n    db.executemany(q, [])", 1),
    ("db.execute('SELECT * FROM runs WHERE suite = ?', (suite,))", 0),
    ("C = ('a', 'b')\nQ = 'UPDATE t SET ' + ', '.join(f'{c} = ?' for c in C)\ndb.execute(Q, v)", 0),
])
def test_the_sql_scan_finds_what_it_must(snippet: str, bad: int) -> None:
    assert len(sql_built_from_values(snippet)[0]) == bad


HOSTILE = [
    "'); DROP TABLE runs; --",
    "x' OR '1'='1",
    '" OR 1=1 --',
    "Robert'); DELETE FROM evaluations WHERE ('1'='1",
    "?; ?, %s %d {0} :name @p $1",
    "back\\slash 'single' \"double\" `tick`\ttab\nnewline",
    "naïve — 日本語 🚀 \u202e",
]


def test_hostile_strings_round_trip_through_every_text_field(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        ids = []
        for i, text in enumerate(HOSTILE):
            run_id = store.start_run(
                workload=text, optimizer=text, suite=text, kind=text, out_dir=text,
                config={"lr": 0.1, "note": text, text: [text]},
                versions={text: text}, machine={"host": text},
            )
            store.add_evaluation(run_id, 10, 1.5, {"train_loss": 0.5, text: 0.9}, text)
            store.add_samples(run_id, [(1, 0.1, 0.7)])
            store.finish_run(run_id, status=text, extra={text: text}, metric=text,
                             metric_value=0.9, steps_done=10 + i)
            ids.append(run_id)
        for run_id, text in zip(ids, HOSTILE, strict=True):
            (row,) = store.runs(suite=text, status=text)
            assert row.id == run_id
            assert (row.workload, row.optimizer, row.suite, row.kind, row.status, row.metric) == (
                text, text, text, text, text, text)
            assert row.config == {"lr": 0.1, "note": text, text: [text]}
            assert (row.versions, row.machine, row.extra) == ({text: text}, {"host": text},
                                                              {text: text})
            assert row.steps_done == 10 + ids.index(run_id) and row.metric_value == 0.9
            assert store.evaluations(run_id) == [(10, 1.5, 0.5, None, 0.9)]
            assert store.samples(run_id) == [(1, 0.1, 0.7)]
        assert store.runs(suite="x' OR '1'='1' --") == []
        assert len(store.runs(status=None)) == len(HOSTILE)
    raw = sqlite3.connect(db)
    try:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"runs", "evaluations", "samples"} <= tables
        assert [r[0] for r in raw.execute("SELECT out_dir FROM runs ORDER BY id")] == HOSTILE
        assert raw.execute("SELECT count(*) FROM evaluations").fetchone() == (len(HOSTILE),)
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        raw.close()
