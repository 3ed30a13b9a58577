"""``sgdlab dist``: spawns the ranks, prints the JSON the issue asks for, rejects bad input."""

from __future__ import annotations

import json

import pytest

from sgdlab.cli import main
from sgdlab.run.dist import JSON_KEYS

pytestmark = pytest.mark.timeout(120)


def test_dist_json_has_the_required_keys_and_the_times_split_the_wall(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["dist", "--algo", "overlap", "--world-size", "2", "--workload",
                 "logreg-breast-cancer", "--lr", "0.1", "--batch-size", "16", "--tau", "2",
                 "--steps", "30", "--latency-ms", "2", "--partition", "dirichlet:0.5", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(JSON_KEYS) <= set(result)
    assert (result["algo"], result["world_size"], result["tau"], result["steps"]) == (
        "overlap", 2, 2, 30)
    assert result["wall_seconds"] == pytest.approx(
        result["compute_seconds"] + result["wait_seconds"])
    # 15 rounds; Overlap waits on the previous round's all-reduce, so the last one may still be
    # in flight when training ends: at least 14 completed, each taking at least the latency.
    assert result["comm_seconds"] >= 14 * 0.002 * (1 - 1e-9)
    assert 0.0 <= result["hidden_fraction"] <= 1.0
    assert result["metric_value"] > 0.8
    checksums = {r["final_checksum"] for r in result["ranks"]}
    assert len(checksums) == 1  # averaged at the end: one model


@pytest.mark.parametrize(("args", "message"), [
    (["--algo", "gossip"], "unknown algo 'gossip'"),
    (["--algo", "local", "--tau", "0"], "invalid tau: 0"),
    (["--algo", "local", "--partition", "dirichlet:-1"], "invalid partition"),
    (["--algo", "local", "--bandwidth-mbps", "-5"], "Invalid bandwidth_mbps: -5.0"),
    (["--algo", "local", "--bandwidth-mbps", "5", "--link-steps", "2"], "not both"),
    (["--algo", "local", "--checkpoint-every", "5"], "need --checkpoint-dir"),
    (["--algo", "local", "--resume"], "need --checkpoint-dir"),
    (["--algo", "local", "--checkpoint-every", "-1", "--checkpoint-dir", "x"],
     "invalid checkpoint-every: -1"),
    (["--algo", "local", "--collective-timeout", "0"], "invalid collective-timeout: 0.0"),
    (["--algo", "local", "--collective-timeout", "nan"], "invalid collective-timeout: nan"),
])
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dist", "--workload", "logreg-breast-cancer", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
