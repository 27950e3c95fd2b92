"""The local multi-process deployment: a SuperLink and SuperNodes as separate OS processes
that talk gRPC (grpc-rere Fleet API), insecure and with TLS + SuperNode authentication;
every strategy; a node killed mid-run and restarted; a node without a registered key; a
node that sends poisoned replies. Each test has its own temporary FLWR_HOME and free ports
and kills what it started by PID (deploy.launch.LocalDeployment)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from algorithms.settings import RoundSettings
from deploy.launch import LocalDeployment

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc"),
]

STRATEGIES = {
    "fedavg": {},
    "clipped_fedavg": {"strategy.name": "clipped_fedavg", "train.local_steps": 4},
    "gossip_pga": {"strategy.name": "gossip_pga", "strategy.period": 2},
}


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


def records(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def run_each_strategy(deployment: LocalDeployment, out: Path, rounds: int = 2) -> dict[str, list[dict]]:
    """Each strategy's per-round records, with the untrained model's as round 0."""
    results = {}
    for name, overrides in STRATEGIES.items():
        status, output = deployment.run(
            {"run.rounds": rounds, "run.output_dir": str(out), "run.name": name, **overrides}
        )
        assert status == "finished:completed", f"{name}:\n{output[-3000:]}"
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["status"] == "completed"
        results[name] = [summary["initial"], *records(out / name)]
    return results


def check_trained(results: dict[str, list[dict]], rounds: int = 2) -> None:
    for name, (initial, *trained) in results.items():
        assert initial["round"] == 0
        assert [r["round"] for r in trained] == list(range(1, rounds + 1)), name
        assert all(r["num_replies"] == 2 and r["num_failures"] == 0 for r in trained), name
        assert trained[-1]["test_loss"] < initial["test_loss"], name  # it learned something


def test_every_strategy_on_two_supernodes_over_grpc(tmp_path):
    tmp = Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))  # short: the workers' Unix sockets live here
    workers = tmp / f"fedlocal-workers-{os.getuid()}"
    with LocalDeployment(2, flwr_home=tmp_path / "flwr", env={"TMPDIR": str(tmp)}) as deployment:
        results = run_each_strategy(deployment, tmp_path)
        nodes = [node.pid for node in deployment.nodes]
        connected = [deployment.fleet_port in tcp_peers(pid) for pid in nodes]
        log = (deployment.home / "superlink.log").read_text()
        # every node's ClientApp handed its messages to a warm worker (client.worker), one
        # per node and run, still waiting for messages
        assert len(list(workers.glob("*.sock"))) == 2 * len(STRATEGIES)
    deadline = time.monotonic() + 10
    while any(workers.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(workers.iterdir())  # the workers left with their SuperNodes, files and all
    shutil.rmtree(tmp)
    assert f"Starting Fleet API (gRPC-rere) on 127.0.0.1:{deployment.fleet_port}" in log
    assert log.count("[Fleet.ActivateNode] Activated node_id=") == 2
    assert connected == [True, True]  # each SuperNode holds a TCP connection to the Fleet API
    check_trained(results)
    assert results["fedavg"][-1]["test_accuracy"] > 0.5
    assert all(not Path(f"/proc/{pid}").exists() for pid in nodes)  # stopped


def test_every_strategy_with_tls_and_node_authentication(tmp_path):
    with LocalDeployment(2, flwr_home=tmp_path / "flwr", secure=True) as deployment:
        results = run_each_strategy(deployment, tmp_path)
        log = (deployment.home / "superlink.log").read_text()
        config = (deployment.home / "config.toml").read_text()
    assert f"Uvicorn running on https://127.0.0.1:{deployment.port}" in log  # Control/Runtime API
    assert log.count("[ControlServicer.RegisterNode] Created node_id=") == 2
    assert "insecure" not in config and "root-certificates" in config
    check_trained(results)


def test_a_supernode_without_a_registered_key_is_refused(tmp_path):
    with LocalDeployment(1, flwr_home=tmp_path / "flwr", secure=True) as deployment:
        intruder = deployment.home / "intruder"
        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(intruder)],
                       check=True)
        deployment.nodes.append(None)
        node = deployment.start_node(1, private_key=intruder)
        code = node.wait(timeout=120)
        node_log = next(deployment.home.glob("supernode-1.log")).read_text()
        link_log = (deployment.home / "superlink.log").read_text()
        status, output = deployment.run({"run.rounds": 1, "run.output_dir": str(tmp_path),
                                         "run.name": "after", "strategy.min_available_nodes": 1,
                                         "strategy.min_train_nodes": 1})
    assert code != 0 and "Failed to activate SuperNode" in node_log
    assert "No SuperNode found with the given public key" in link_log
    assert link_log.count("[Fleet.ActivateNode] Activated node_id=") == 1  # the registered one
    assert status == "finished:completed", output[-3000:]  # the federation is unharmed
    assert records(tmp_path / "after")[-1]["num_replies"] == 1


def wait_for_round(folder: Path, server_round: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (folder / "metrics.jsonl").exists() and any(
            r["round"] >= server_round for r in records(folder)
        ):
            return
        time.sleep(0.2)
    raise TimeoutError(f"round {server_round} did not finish within {timeout} s")


def test_a_killed_supernode_drops_out_and_a_restarted_one_rejoins(tmp_path):
    """FedAvg with 3 SuperNodes: node 2 is killed (SIGKILL, no goodbye) after round 1; the
    rounds it misses go on with the 2 that answer (after round_timeout) and name it; it is
    restarted after round 3 and answers again."""
    rounds, folder = 6, tmp_path / "faults"
    with LocalDeployment(3, flwr_home=tmp_path / "flwr") as deployment:
        result = {}

        def run():
            result["status"], result["output"] = deployment.run({
                "run.rounds": rounds, "run.output_dir": str(tmp_path), "run.name": "faults",
                "strategy.min_available_nodes": 2, "strategy.min_train_nodes": 2,
                "strategy.min_replies": 2, "strategy.round_timeout": 20.0,
            })

        thread = threading.Thread(target=run)
        thread.start()
        try:
            wait_for_round(folder, 1)
            os.killpg(deployment.nodes[2].pid, 9)
            wait_for_round(folder, 3)
            deployment.start_node(2)
        finally:
            thread.join(timeout=900)
    assert result["status"] == "finished:completed", result["output"][-3000:]
    rows = [r for r in records(folder) if r["round"] > 0]
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    replies = [r["num_replies"] for r in rows]
    assert replies[0] == 3 and 2 in replies[1:3] and replies[-1] == 3, replies
    assert all(n >= 2 for n in replies)
    assert "no reply from node(s)" in result["output"] or "Received error in reply" in result["output"]
    assert rows[-1]["test_accuracy"] > 0.5


def test_poisoned_replies_are_rejected_by_node_and_never_averaged(tmp_path):
    """Of 4 SuperNodes, node 2 answers with NaN arrays and node 3 with a wrong shape: every
    such reply is rejected with a log line naming its node; the model stays finite and
    learns from the other two."""
    faults = {2: "fault='nan'", 3: "fault='shape'"}
    with LocalDeployment(4, flwr_home=tmp_path / "flwr", node_config=faults) as deployment:
        status, output = deployment.run({"run.rounds": 2, "run.output_dir": str(tmp_path),
                                         "run.name": "poisoned"})
    assert status == "finished:completed", output[-3000:]
    rejected = re.findall(r"Rejected the reply of node (\d+): (.*)", output)
    assert len(rejected) == 4 and len({node for node, _ in rejected}) == 2, rejected
    by_node = {node: {reason for n, reason in rejected if n == node} for node, _ in rejected}
    assert sorted(len(reasons) for reasons in by_node.values()) == [1, 1]  # the same each round
    reasons = sorted(next(iter(r)) for r in by_node.values())
    assert "has shape (129, 64), expected (128, 64)" in reasons[0], reasons
    assert "holds NaN or infinite values" in reasons[1], reasons
    rows = records(tmp_path / "poisoned")
    assert all(r["num_replies"] == 2 and r["num_failures"] == 2 for r in rows)
    assert all(math.isfinite(r["test_loss"]) for r in rows)
    assert rows[-1]["test_accuracy"] > 0.5


def test_devices_train_on_their_own_data_files_over_tls(tmp_path):
    """Two SuperNodes with data-path files of different sizes (made by the export command)
    and no central slice, TLS + node authentication: the reply sizes are the files'."""
    import numpy as np

    files = []
    for k, n in ((0, 2), (1, 3)):  # partition 0 of 2 and partition 1 of 3: different sizes
        path = tmp_path / f"device{k}.npz"
        subprocess.run([sys.executable, "-m", "tasks.local_data", "export", "--task", "digits",
                        "--partition-id", "0", "--num-partitions", str(n), str(path)], check=True,
                       cwd=Path(__file__).resolve().parents[1])
        files.append(path)
    sizes = [len(np.load(f)["y"]) for f in files]
    node_config = {k: f"data-path='{f}'" for k, f in enumerate(files)}
    with LocalDeployment(2, flwr_home=tmp_path / "flwr", secure=True, node_config=node_config) as d:
        status, output = d.run({"run.rounds": 2, "run.output_dir": str(tmp_path), "run.name": "devices",
                                "train.local_epochs": 1, "strategy.weighting": "examples"})
    assert status == "finished:completed", output[-3000:]
    rows = records(tmp_path / "devices")
    # one epoch over each file (batch 32), averaged with the files' sizes as weights
    one_epoch = RoundSettings.fixed(lr=0.05, batch_size=32, steps=20).with_(local_epochs=1)
    steps = [one_epoch.steps(n) for n in sizes]
    expected = sum(n * k for n, k in zip(sizes, steps, strict=True)) / sum(sizes)
    assert all(r["num_replies"] == 2 for r in rows)
    assert rows[-1]["num_steps"] == pytest.approx(expected)
    assert rows[-1]["test_accuracy"] > 0.5


def test_silo_supernodes_serve_their_logical_clients_over_grpc(tmp_path):
    """Cohorts deployed: 2 SuperNodes host data.num_clients = 6 logical clients, node p the
    clients c with c % 2 == p, each from its own file client-<c>.npz in the node's data-path
    folder (a silo of data owners). The files hold the central slices, so the run over gRPC
    ends where the one-process engine does."""
    import numpy as np

    import engine
    import tasks
    from conf import load_config

    clients = 6
    overrides = {"run.rounds": 2, "data.num_clients": clients}
    cfg = load_config(overrides)
    folders = [tmp_path / f"silo{p}" for p in range(2)]
    for c in range(clients):
        split = tasks.client_split(cfg, c, clients)
        folders[c % 2].mkdir(exist_ok=True)
        np.savez(folders[c % 2] / f"client-{c}.npz", x=split.x.numpy(), y=split.y.numpy())
    node_config = {p: f"data-path='{folder}'" for p, folder in enumerate(folders)}
    with LocalDeployment(2, flwr_home=tmp_path / "flwr", node_config=node_config) as d:
        status, output = d.run({**overrides, "run.output_dir": str(tmp_path), "run.name": "silo"})
    assert status == "finished:completed", output[-3000:]
    rows = records(tmp_path / "silo")
    want = engine.run(cfg, clients, evaluate_every=1).records
    assert [r["num_replies"] for r in rows] == [clients, clients]
    for got, expected in zip(rows, want, strict=True):
        assert got["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-5)
        assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)


# IID splits, so that a run without the rogue's data is comparable with the honest one
ROGUE_COMMON = {"run.rounds": 3, "data.partition": "iid"}
ROGUE_RUNS = {  # rogue SuperNode 2's fault, the strategy, what the server must log about it
    "weight_inflation": ({}, None),
    "complex_nan": ({}, "has dtype complex64, not a real number type"),
    "extra_metric": ({}, None),
    "float64_huge": ({"strategy.name": "gossip_pga", "strategy.period": 2, "train.local_steps": 10,
                      "strategy.failure_policy": "renormalize"},
                     "holds NaN or infinite values (as float32)"),
}


def final_accuracy(deployment: LocalDeployment, out: Path, name: str, overrides: dict) -> dict:
    status, output = deployment.run({**ROGUE_COMMON, "run.output_dir": str(out), "run.name": name,
                                     **overrides})
    assert status == "finished:completed", f"{name}:\n{output[-3000:]}"
    summary = json.loads((out / name / "summary.json").read_text())
    return {"accuracy": summary["final"]["test_accuracy"], "summary": summary, "output": output}


@pytest.fixture(scope="module")
def honest_accuracy(tmp_path_factory):
    """The final test accuracy of honest 3-SuperNode runs, fedavg and gossip_pga."""
    out = tmp_path_factory.mktemp("honest")
    with LocalDeployment(3, flwr_home=out / "flwr") as deployment:
        return {"fedavg": final_accuracy(deployment, out, "fedavg", {})["accuracy"],
                "gossip_pga": final_accuracy(deployment, out, "gossip_pga",
                                             ROGUE_RUNS["float64_huge"][0])["accuracy"]}


@pytest.mark.parametrize("fault", list(ROGUE_RUNS))
def test_a_rogue_supernode_neither_stops_nor_steers_the_run(tmp_path, honest_accuracy, fault):
    """3 SuperNodes, node 2 rogue (node config fault=...): the run completes, the rogue's
    unusable replies are rejected by node, and the final accuracy is within 0.05 of the
    honest run's."""
    overrides, reason = ROGUE_RUNS[fault]
    with LocalDeployment(3, flwr_home=tmp_path / "flwr", node_config={2: f"fault='{fault}'"}) as deployment:
        result = final_accuracy(deployment, tmp_path, fault, overrides)
    strategy = overrides.get("strategy.name", "fedavg")
    assert abs(result["accuracy"] - honest_accuracy[strategy]) <= 0.05, (result["accuracy"], honest_accuracy)
    rejected = re.findall(r"Rejected the reply of node (\d+): (.*)", result["output"])
    if reason is None:  # a reply the server can use: nothing rejected, nothing failed
        assert not rejected and result["summary"]["status"] == "completed"
    else:
        assert rejected and all(reason in why for _, why in rejected), rejected
        assert len({node for node, _ in rejected}) == 1
        assert result["summary"]["status"] == "completed_with_failures"
        assert result["summary"]["failures"]
