"""Flower's simulation on an existing Ray cluster: a local Ray head plus a second Ray node on
this machine (each with its own temp dir, loopback only, stopped by killing its process
group), joined by ``python -m deploy.launch --ray-address``; the run's ClientApp actors
land on both Ray nodes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from deploy.launch import free_port, main

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI is not installed")]


class LocalRayCluster:
    """``ray start --block`` for a head and ``workers`` more nodes, one CPU each, every node in
    its own process group and temp dir (short, under /tmp: Ray's socket paths must fit
    108 bytes)."""

    def __init__(self, workers: int = 1):
        self.root = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.workers = workers
        self.nodes: list[tuple[subprocess.Popen, Path]] = []

    def _start(self, name: str, args: list[str]) -> None:
        temp = self.root / name
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        cmd = ["ray", "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
               f"--temp-dir={temp}", "--disable-usage-stats", *args]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        node = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.nodes.append((node, temp))
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (self.root / f"{name}.log").read_text():
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {name} did not start:\n"
                                   f"{(self.root / f'{name}.log').read_text()[-3000:]}")
            time.sleep(0.2)

    def __enter__(self) -> LocalRayCluster:
        try:
            self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=false"])
            for i in range(self.workers):
                self._start(f"node{i}", [f"--address={self.address}"])
        except BaseException:
            self.stop()
            raise
        return self

    def actor_logs(self, temp: Path, actor: str) -> list[Path]:
        """The worker logs under one node's temp dir of processes that hosted ``actor``."""
        logs = temp.glob("session_*/logs/worker-*.out")
        return [p for p in logs if f":actor_name:{actor}" in p.read_text()]

    def stop(self) -> None:
        for node, _ in reversed(self.nodes):
            try:
                os.killpg(node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            node.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        self.stop()


def test_the_simulation_joins_a_ray_cluster_and_uses_both_nodes(tmp_path, capsys):
    """A fedavg run with one client per SuperNode, then a cohort run (12 logical clients on
    the 4 SuperNodes), on one cluster: each run's ClientApp actors sit on both Ray nodes."""
    runs = {"ray": "", "ray-cohort": " data.num_clients=12"}
    placed = {}
    with LocalRayCluster(workers=1) as cluster:
        for name, extra in runs.items():
            before = {temp.name: set(cluster.actor_logs(temp, "ClientAppActor")) for _, temp in cluster.nodes}
            code = main(["--ray-address", cluster.address, "--num-supernodes", "4", "--run-config",
                         f"run.rounds=2 run.output_dir='{tmp_path}' run.name='{name}'{extra}"])
            output = capsys.readouterr().out
            assert code == 0, output[-3000:]
            placed[name] = {temp.name: set(cluster.actor_logs(temp, "ClientAppActor")) - before[temp.name]
                            for _, temp in cluster.nodes}
    for name in runs:  # this run's ClientApp actors: on the head and on the second node
        assert all(placed[name].values()), (name, placed[name])
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["final"]["test_accuracy"] > 0.3
    rows = [json.loads(x) for x in (tmp_path / "ray-cohort" / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_replies"] for r in rows] == [12, 12]  # every logical client, every round
    assert cluster_pids(cluster.root) == []  # every Ray process of the cluster is gone


def cluster_pids(root: Path) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(root).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids
