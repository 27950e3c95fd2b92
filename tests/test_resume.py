"""Checkpoints and resume in Flower's simulation engine: a run of 6 rounds equals a run
stopped after 3 and resumed to 6, to the last bit of model.pt (and node_models.pt), for
every strategy; a resumed run's records hold every round once; a config that differs is
refused by name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from deploy.launch import LocalSimulation
from server.checkpoint import checkpoints

pytestmark = pytest.mark.slow

# clipped_fedavg keeps no server state beyond FedAvg's (its algorithm's state_dict is empty;
# tests/test_checkpoint.py round-trips the others'); left out here to keep CI's time down
STRATEGIES = {
    "fedavg": {"strategy.aggregator": "bgmd"},  # BGMD's memory is state too
    "naive_clipping": {"train.momentum": 0.9},  # the server's momentum is state
    "gossip_pga": {"strategy.period": 2, "strategy.averaging": "adaptive"},
}


@pytest.fixture(scope="module")
def sim():
    with LocalSimulation() as simulation:
        yield simulation


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", STRATEGIES)
def test_three_rounds_then_resumed_to_six_equal_six_rounds_bit_for_bit(sim, tmp_path, name):
    base = {"strategy.name": name, "run.output_dir": str(tmp_path), "run.checkpoint_every": 1,
            **STRATEGIES[name]}
    nodes = 4
    status, output = sim.run({**base, "run.rounds": 6, "run.name": "whole", "run.keep_checkpoints": 6},
                             num_supernodes=nodes)
    assert status == "finished:completed", output[-3000:]
    whole, part = tmp_path / "whole", tmp_path / "part"
    if name == "fedavg":  # a run of 3 rounds
        status, output = sim.run({**base, "run.rounds": 3, "run.name": "part"}, num_supernodes=nodes)
        assert status == "finished:completed", output[-3000:]
    else:  # the whole run's folder as it was after round 3: its round-3 checkpoint is the one
        # a 3-round run writes (the fedavg case checks that), at one simulation less
        shutil.copytree(whole, part)
        for later in checkpoints(part)[3:]:
            later.unlink()
        for file in ("model.pt", "node_models.pt", "summary.json"):
            (part / file).unlink(missing_ok=True)
    assert [p.name for p in checkpoints(part)][-1] == "round-000003.pt"
    status, output = sim.run({**base, "run.rounds": 6, "run.name": "part", "run.resume": str(part),
                              "run.keep_checkpoints": 6}, num_supernodes=nodes)
    assert status == "finished:completed", output[-3000:]
    assert "resuming" in output and "after round 3 of 6" in output
    files = ["model.pt"] + (["node_models.pt"] if name == "gossip_pga" else [])
    for file in files:
        a, b = torch.load(whole / file), torch.load(part / file)
        flat_a = a if file == "model.pt" else {f"{i}.{k}": v for i, s in a.items() for k, v in s.items()}
        flat_b = b if file == "model.pt" else {f"{i}.{k}": v for i, s in b.items() for k, v in s.items()}
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            assert torch.equal(flat_a[key], flat_b[key]), (file, key)
    assert [r["round"] for r in records(part)] == [1, 2, 3, 4, 5, 6]
    for mine, theirs in zip(records(part), records(whole), strict=True):
        assert mine["train_loss"] == theirs["train_loss"] and mine["test_loss"] == theirs["test_loss"]
    summary = json.loads((part / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["last_round"] == 6
    if name == "fedavg":  # a completed run is extended the same way
        status, output = sim.run({**base, "run.rounds": 7, "run.name": "whole", "run.resume": str(whole),
                                  "run.keep_checkpoints": 6}, num_supernodes=nodes)
        assert status == "finished:completed", output[-3000:]
        assert [r["round"] for r in records(whole)] == [1, 2, 3, 4, 5, 6, 7]
        assert json.loads((whole / "summary.json").read_text())["last_round"] == 7
        assert not torch.equal(torch.load(whole / "model.pt")["net.1.weight"], b["net.1.weight"])


def test_a_changed_config_is_refused_by_name(sim, tmp_path):
    """Through the ServerApp: the refusal names the key, and the folder is left as it was."""
    from conf import load_config
    from server.checkpoint import save_checkpoint
    from server.results import RunFolder

    base = {"run.output_dir": str(tmp_path), "run.name": "r", "run.rounds": 1}
    folder = RunFolder(load_config(base))
    folder.record_round(1, {"loss": 1.0}, {})
    save_checkpoint(folder.path, 1, {"round": 1, "records": folder.records, "initial": {}, "elapsed": 1.0})
    before = (folder.path / "metrics.jsonl").read_text()
    status, output = sim.run({**base, "run.rounds": 2, "train.lr": 0.5, "run.resume": str(folder.path)},
                             num_supernodes=2)
    assert status == "finished:failed"
    assert "differs from the one" in output and "train.lr (0.05 there, 0.5 now)" in output
    assert (folder.path / "metrics.jsonl").read_text() == before


def serverapp_pids(flwr_home) -> list[int]:
    """The ``flwr-serverapp`` processes of the deployment under ``flwr_home`` (from /proc)."""
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except (OSError, ValueError):
            continue
        if b"flwr-serverapp" in cmdline and f"FLWR_HOME={flwr_home}".encode() in environ.split(b"\0"):
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("name", ["fedavg", "gossip_pga"])
def test_a_serverapp_killed_mid_run_resumes_with_the_supernodes_still_running(tmp_path, name):
    """A loopback deployment of 2 SuperNodes: the ServerApp is killed (SIGKILL) after round 2
    of 6; a new run with run.resume finishes the same folder on the same SuperNodes, with
    every round in metrics.jsonl once (Gossip-PGA first asks the nodes their graph index)."""
    import os
    import threading
    import time

    from deploy.launch import LocalDeployment

    folder = tmp_path / "killed"
    config = {"run.rounds": 6, "run.output_dir": str(tmp_path), "run.name": "killed",
              "strategy.name": name}
    with LocalDeployment(2, flwr_home=tmp_path / "flwr") as deployment:
        first = {}
        thread = threading.Thread(target=lambda: first.update(out=deployment.run(config, timeout=600)),
                                  daemon=True)
        thread.start()
        deadline = time.monotonic() + 300
        while not [p for p in checkpoints(folder) if p.name >= "round-000002.pt"]:
            assert time.monotonic() < deadline, "round 2 did not finish in 300 s"
            time.sleep(0.2)
        time.sleep(0.5)  # into round 3: its messages are out, its replies not yet in
        pids = serverapp_pids(deployment.home)
        assert pids, "no flwr-serverapp process found"
        for pid in pids:
            os.kill(pid, 9)
        status, output = deployment.run({**config, "run.resume": str(folder)}, timeout=600)
    assert status == "finished:completed", output[-3000:]
    assert "resuming" in output
    rounds = [r["round"] for r in records(folder)]
    assert rounds == [1, 2, 3, 4, 5, 6], rounds
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["last_round"] == 6
    # it trained on (gossip_pga's 6 iterations of 1 local step reach ~0.34 from ~0.1)
    assert records(folder)[-1]["test_accuracy"] > summary["initial"]["test_accuracy"] + 0.1
