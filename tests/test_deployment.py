"""The local multi-process deployment: a SuperLink and SuperNodes as separate OS processes
that talk gRPC (grpc-rere Fleet API). Temporary FLWR_HOME, free ports, every process
killed by PID (server.launch.LocalDeployment)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from server.launch import LocalDeployment

pytestmark = pytest.mark.slow


def tcp_peers(pid: int) -> set[int]:
    """Remote ports of the established TCP connections of process ``pid`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    peers = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes:  # 01 = ESTABLISHED
                peers.add(int(fields[2].rsplit(":", 1)[1], 16))
    return peers


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_two_supernodes_train_fedavg_over_grpc(tmp_path):
    with LocalDeployment(2, flwr_home=tmp_path / "flwr") as deployment:
        status, output = deployment.run(
            {"run.rounds": 2, "run.output_dir": str(tmp_path), "run.name": "deployed"}
        )
        nodes = [node.pid for node in deployment.nodes]
        connected = [deployment.fleet_port in tcp_peers(pid) for pid in nodes]
        log = (deployment.home / "superlink.log").read_text()
    assert status == "finished:completed", output[-3000:]
    assert f"Starting Fleet API (gRPC-rere) on 127.0.0.1:{deployment.fleet_port}" in log
    assert log.count("[Fleet.ActivateNode] Activated node_id=") == 2
    assert connected == [True, True]  # each SuperNode holds a TCP connection to the Fleet API
    records = [json.loads(x) for x in (tmp_path / "deployed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["num_replies"] == 2 and r["num_failures"] == 0 for r in records)
    assert records[-1]["test_accuracy"] > 0.5
    assert all(not Path(f"/proc/{pid}").exists() for pid in nodes)  # stopped
