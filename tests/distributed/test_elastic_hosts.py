"""An elastic run across two hosts: two network namespaces joined by a real link, one torchrun
agent in each (c10d rendezvous), each host keeping its own ranks' checkpoints (no shared file
system). Rank 1 is killed; both agents restart their workers, which agree on the newest cut
every rank holds and end with the parameters of an uninterrupted run. Root only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from faults import complete_cuts, kill, tagged

from sgdlab.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and tc"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("tc") is None,
                       reason="needs ip and tc (iproute2): make iproute2"),
]

TORCHRUN = Path(sys.executable).with_name("torchrun")
RUN = ["--algo", "overlap", "--world-size", "2", "--workload", "logreg-breast-cancer",
       "--lr", "0.05", "--batch-size", "8", "--steps", "240", "--seed", "4", "--eval-every", "80",
       "--json"]


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[object]:
    from sgdlab.testbed import Testbed, teardown

    name = f"el{os.getpid() % 100000}"
    yield Testbed.up(2, "1000mbit", name=name, state_dir=tmp_path / "tb")
    teardown(name, state_dir=tmp_path / "tb")


def test_torchrun_across_two_hosts_restarts_and_resumes(testbed: object, tmp_path: Path) -> None:
    reference = subprocess.run(
        [sys.executable, "-m", "sgdlab.cli", "dist", *RUN,
         "--checkpoint-dir", str(tmp_path / "ref")],
        capture_output=True, text=True, timeout=120)
    assert reference.returncode == 0, reference.stderr

    tag, hosts = uuid.uuid4().hex, testbed.hosts  # type: ignore[attr-defined]
    roots = [tmp_path / f"host{i}" for i in range(2)]
    agents = []
    for i, root in enumerate(roots):
        argv = [str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1", "--max-restarts", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{hosts[0].address}:29400",
                "--rdzv-id", tag, "--rdzv-conf", f"is_host={int(i == 0)}",
                "--local-addr", hosts[i].address,
                "-m", "sgdlab.cli", "dist", *RUN, "--latency-ms", "15",
                "--checkpoint-dir", str(root), "--checkpoint-every", "30"]
        env = {"SGDLAB_TEST_TAG": tag, "GLOO_SOCKET_IFNAME": hosts[i].interface}
        agents.append(testbed.spawn(i, argv, env=env, stdout=subprocess.PIPE,  # type: ignore[attr-defined]
                                    stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 120
        while not complete_cuts(roots[0]):  # host 0 marks a cut once every rank wrote its part
            assert time.monotonic() < deadline, "no complete checkpoint"
            assert all(a.poll() is None for a in agents), agents[0].communicate()[1][-3000:]
            time.sleep(0.05)
        victims = tagged(tag, RANK="1", TORCHELASTIC_RESTART_COUNT="0")
        assert len(victims) == 1, victims
        kill(victims)
        outs = [a.communicate(timeout=180) for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    assert [a.returncode for a in agents] == [0, 0], [o[1][-2000:] for o in outs]
    # Each host holds its own rank's files only: the cut was agreed without a shared folder.
    assert not list(roots[0].glob("step-*/rank-1.pt"))
    assert not list(roots[1].glob("step-*/rank-0.pt"))
    result = json.loads((roots[0] / "result.json").read_text())
    assert result["resumed_from"] >= 30, "the restarted ranks did not resume"
    a = load_checkpoint(tmp_path / "ref" / "model.pt")["model"]
    b = load_checkpoint(roots[0] / "model.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
