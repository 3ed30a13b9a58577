"""Generated bad input at scale: the tests of ``tests/reliability`` under the thorough profile.

Runs each target's hypothesis tests with ``SGDLAB_HYPOTHESIS_PROFILE=thorough`` (1000
generated cases per test; ``SGDLAB_FUZZ_EXAMPLES`` changes it), one pytest process per target
so each gets its own wall time, and reads hypothesis's statistics for the number of cases that
ran. Writes ``benchmarks/results/fuzz.md``.

    nice -n 10 env PYTHONPATH=src .venv/bin/python benchmarks/bench_fuzz.py

The figures of the failures found and fixed come from the commits that fixed them (listed in
the table's notes); a run of this script checks that none is back: every target must pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "optimizer hyperparameters": "tests/reliability/test_fuzz_optim.py",
    "CLI arguments": "tests/reliability/test_fuzz_cli.py",
    "config values": "tests/reliability/test_fuzz_config.py",
    "checkpoints": "tests/reliability/test_fuzz_checkpoint.py",
    "data, cache and results-db files": "tests/reliability/test_fuzz_data.py",
}
# "    - 1000 passing, 0 failing, and 12 invalid test cases" (invalid: rejected, never run)
PASSING = re.compile(r"- (\d+) passing, (\d+) failing")
TEST = re.compile(r"^(tests/\S+::\S+):$", re.M)


def run(path: str) -> dict[str, object]:
    env = {**os.environ, "SGDLAB_HYPOTHESIS_PROFILE": "thorough"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "--hypothesis-show-statistics", path]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    per_test: dict[str, int] = {}
    names = TEST.findall(proc.stdout)
    chunks = TEST.split(proc.stdout)[2::2]
    for name, chunk in zip(names, chunks, strict=False):
        m = PASSING.search(chunk)
        if m:
            per_test[name.split("::")[1]] = int(m.group(1)) + int(m.group(2))
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]
    return {"ok": proc.returncode == 0, "seconds": seconds, "cases": per_test, "summary": tail}


def main() -> int:
    rows = []
    for target, path in TARGETS.items():
        r = run(path)
        rows.append((target, path, r))
        print(f"{target}: {sum(r['cases'].values())} cases, {r['seconds']:.0f} s, {r['summary']}",
              flush=True)
    lines = [
        "| target | file | generated cases (per test) | total | wall (s) | result |",
        "|---|---|---|---:|---:|---|",
    ]
    for target, path, r in rows:
        cases = ", ".join(f"{k} {v}" for k, v in r["cases"].items())  # type: ignore[union-attr]
        total = sum(r["cases"].values())  # type: ignore[union-attr]
        lines.append(f"| {target} | `{path}` | {cases} | {total} | {r['seconds']:.0f} | "
                     f"{r['summary']} |")
    out = ROOT / "benchmarks" / "results" / "fuzz-table.md"
    out.write_text("\n".join(lines) + "\n")
    print(out)
    return 0 if all(r["ok"] for _, _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
