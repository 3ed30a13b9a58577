"""Pass/fail counts of the optimizer-contract suites, per optimizer and per check.

Runs PyTorch's optimizer contract as we wrote it (``tests/optim/test_torch_contract*.py``: an
``OptimizerInfo`` table of ours, the checks of torch's ``test/test_optim.py`` and
``pytorch_optimizer``'s generic ones) plus the distributed wrappers' hook tests, and tabulates
the outcome of every case from pytest's JUnit XML::

    .venv/bin/python benchmarks/contract_table.py --out benchmarks/results/contract.md

Exits 1 if any case failed, so the table cannot hide a failure.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = [
    "tests/optim/test_torch_contract.py",
    "tests/optim/test_torch_contract_support.py",
    "tests/optim/test_torch_contract_state.py",
    "tests/optim/test_torch_contract_peers.py",
    "tests/optim/test_torch_contract_proximal.py",
    "tests/distributed/test_hooks.py",
]


def run_suites() -> list[tuple[str, str, str]]:
    """``(check, optimizer, outcome)`` for every case; outcome is pass, fail or skip."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"--junitxml={report}", *SUITES],
            cwd=ROOT, check=False, stdout=subprocess.DEVNULL,
        )
        cases = []
        for case in ET.parse(report).getroot().iter("testcase"):
            name = case.get("name", "")
            check, _, params = name.partition("[")
            params = params.removesuffix("]")
            optimizer = params.split("-")[0] if params else "(single case)"
            if case.find("failure") is not None or case.find("error") is not None:
                outcome = "fail"
            elif case.find("skipped") is not None:
                outcome = "skip"
            else:
                outcome = "pass"
            cases.append((check, optimizer, outcome))
        return cases


def table(cases: list[tuple[str, str, str]], key: int) -> list[str]:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for case in cases:
        counts[case[key]][case[2]] += 1
    lines = ["| " + ("check" if key == 0 else "optimizer") + " | pass | fail | skip |",
             "|---|---|---|---|"]
    for name in sorted(counts):
        c = counts[name]
        lines.append(f"| {name} | {c['pass']} | {c['fail']} | {c['skip']} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown here (else stdout)")
    args = parser.parse_args()
    cases = run_suites()
    if not cases:
        print("error: no test case ran", file=sys.stderr)
        return 2
    total = collections.Counter(outcome for _, _, outcome in cases)
    text = "\n".join([
        "# The optimizer contract: pass/fail counts",
        "",
        "Reproduce: `.venv/bin/python benchmarks/contract_table.py --out "
        "benchmarks/results/contract.md` (runs the suites below; part of `make test` too).",
        "",
        "Suites: " + ", ".join(f"`{s}`" for s in SUITES) + ".",
        "",
        f"**{len(cases)} cases: {total['pass']} passed, {total['fail']} failed, "
        f"{total['skip']} skipped.**",
        "",
        "## Per optimizer",
        "",
        *table(cases, 1),
        "",
        "## Per check",
        "",
        *table(cases, 0),
        "",
    ])
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 1 if total["fail"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
