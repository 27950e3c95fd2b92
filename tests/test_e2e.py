"""End-to-end: the app in Flower's simulation engine on a private SuperLink.

Each run uses a temporary FLWR_HOME and free ports; the SuperLink's process group is
killed by PID when the module finishes (deploy.launch.LocalSimulation).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from deploy.launch import LocalSimulation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim():
    with LocalSimulation() as simulation:
        yield simulation


def test_three_rounds_four_clients_digits(sim, tmp_path):
    status, output = sim.run(
        {"run.rounds": 3, "run.output_dir": str(tmp_path), "run.name": "e2e"}, num_supernodes=4
    )
    assert status == "finished:completed", output[-3000:]
    run = tmp_path / "e2e"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    for record in records:
        assert record["num_replies"] == 4 and record["num_failures"] == 0
        assert record["bytes_sent"] > 0 and record["bytes_received"] > 0 and record["seconds"] > 0
        assert 0.0 <= record["test_accuracy"] <= 1.0 and record["train_loss"] > 0
    summary = json.loads((run / "summary.json").read_text())
    accuracies = [summary["initial"]["test_accuracy"]] + [r["test_accuracy"] for r in records]
    assert accuracies[-1] > accuracies[0] + 0.3  # from ~0.1 (chance) to well above
    assert records[-1]["test_loss"] < records[0]["test_loss"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["run"]["rounds"] == 3 and config["task"]["name"] == "digits"
    state = torch.load(run / "model.pt")
    assert all(torch.isfinite(t).all() for t in state.values())
    assert "fedlocal: round 3/3 | train_loss" in output and f"results in {run}" in output


def test_bad_config_stops_the_run_before_training(sim, tmp_path):
    status, output = sim.run({"train.lr": -1.0, "run.output_dir": str(tmp_path)}, num_supernodes=2)
    assert status == "finished:failed"
    assert "Config key 'train.lr' = -1.0 is out of range; it must be > 0.0." in output
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing trained


def test_gossip_pga_in_flower_matches_the_reference_simulator(sim, tmp_path):
    """50 iterations, n = 8, ring, H = 4: the hosted node models equal the oracle's."""
    import numpy as np

    from conf import load_config
    from engine import run as simulate

    overrides = {"strategy.name": "gossip_pga", "strategy.topology": "ring", "strategy.period": 4,
                 "run.rounds": 50, "train.momentum": 0.5, "run.output_dir": str(tmp_path),
                 "run.name": "gossip"}
    status, output = sim.run(overrides, num_supernodes=8)
    assert status == "finished:completed", output[-3000:]
    nodes = torch.load(tmp_path / "gossip" / "node_models.pt")
    hosted = np.stack([np.concatenate([t.numpy().ravel() for t in nodes[i].values()]) for i in range(8)])
    reference = simulate(load_config(overrides), 8)
    assert np.abs(hosted - reference.X).max() < 1e-5
    assert np.abs(hosted - hosted.mean(0)).max() > 1e-3  # iterate 50 is a gossip step: models differ
    records = [json.loads(line) for line in (tmp_path / "gossip" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_average"] for r in records[:8]] == [0, 0, 0, 1, 0, 0, 0, 1]
    assert all(r["consensus_distance"] == 0.0 for r in records if r["global_average"])
    assert records[0]["beta"] == pytest.approx(0.8047, abs=1e-4)
    for ours, theirs in zip(records, reference.records, strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)


@pytest.mark.parametrize(
    "mode",
    [{"strategy.name": "clipped_fedavg"}, {"strategy.name": "naive_clipping"},
     {"run.preset": "celgc_i1"}, {"run.preset": "unclipped_local_sgd"}],
    ids=["clipped_fedavg", "naive_clipping", "celgc_i1", "unclipped_local_sgd"],
)
def test_clipping_modes_run_on_shakespeare(sim, tmp_path, shakespeare_path, mode):
    overrides = {"task.name": "shakespeare", "data.path": shakespeare_path, "data.seq_len": 20,
                 "data.max_train": 800, "model.width": 32, "train.local_steps": 3,
                 "train.smoothness_every": 2, "run.rounds": 2, "run.output_dir": str(tmp_path),
                 "run.name": "run", **mode}
    status, output = sim.run(overrides, num_supernodes=4)
    assert status == "finished:completed", output[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2] and records[1]["comm_rounds"] == 2
    assert all(r["test_perplexity"] > 1 and r["grad_norm"] > 0 for r in records)
    assert records[1]["bytes_total"] == sum(r["bytes_sent"] + r["bytes_received"] for r in records)
    assert all(0.0 <= r["clip_fraction"] <= 1.0 for r in records)


def test_failed_replies_are_reported_and_too_many_fail_the_run(sim, tmp_path):
    """4 simulated clients. One sends NaN every round: the run completes, says
    completed_with_failures and counts the failures per round. Three do: each round has 1
    sound reply of 4, below the default strategy.min_replies = 0.5, so the run fails (the
    launcher's exit code follows the status) and names the rejected nodes."""
    status, output = sim.run({"run.rounds": 2, "run.output_dir": str(tmp_path), "run.name": "one",
                              "attack.kind": "nan", "attack.fraction": 0.25}, num_supernodes=4)
    assert status == "finished:completed", output[-3000:]
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["status"] == "completed_with_failures"
    assert summary["failures"] == {str(r): {"num_failures": 1, "num_replies": 3, "aggregate_rejected": 0}
                                   for r in (1, 2)}
    assert output.count("holds NaN or infinite values") == 2
    status, output = sim.run({"run.rounds": 2, "run.output_dir": str(tmp_path), "run.name": "three",
                              "attack.kind": "nan", "attack.fraction": 0.75}, num_supernodes=4)
    assert status == "finished:failed"
    assert "only 1 sound reply(ies) of 4 sent, fewer than strategy.min_replies=0.5 asks (2)" in output
    summary = json.loads((tmp_path / "three" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds"] == 0 and summary["last_round"] == 0
    assert summary["error"].startswith("DropoutError: Round 1: only 1 sound reply")
    # the last good global model (here the initial one) is kept
    state = torch.load(tmp_path / "three" / "model.pt")
    assert state.keys() and all(torch.isfinite(t).all() for t in state.values())


def test_min_replies_above_the_connected_nodes_is_named_before_round_1(sim, tmp_path):
    """strategy.min_replies=5 on 4 simulated nodes: the ServerApp says so when the nodes are
    connected, before any training, and round 1 then fails as it must."""
    status, output = sim.run({"run.rounds": 1, "run.output_dir": str(tmp_path), "run.name": "five",
                              "strategy.min_replies": 5}, num_supernodes=4)
    assert status == "finished:failed"
    warned = output.index("with the 4 node(s) connected now: strategy.min_replies = 5 asks for 5")
    assert warned < output.index("[ROUND 1/1]")


def test_a_cohort_run_in_flowers_simulation_equals_the_engine(sim, tmp_path):
    """8 logical clients on 3 SuperNodes, half of them sampled per round: one message per
    node and round, and the global model of the run with one SuperNode per client."""
    from conf import load_config
    from engine import run as simulate

    overrides = {"data.num_clients": 8, "strategy.fraction_train": 0.5,
                 "strategy.min_available_nodes": 3, "run.rounds": 3, "train.local_steps": 5,
                 "run.output_dir": str(tmp_path), "run.name": "cohort"}
    status, output = sim.run(overrides, num_supernodes=3)
    assert status == "finished:completed", output[-3000:]
    records = [json.loads(line) for line in (tmp_path / "cohort" / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_replies"] for r in records] == [4, 4, 4]
    hosted = torch.load(tmp_path / "cohort" / "model.pt")
    reference = simulate(load_config(overrides), 8).state
    for key, value in reference.items():
        torch.testing.assert_close(hosted[key], value, rtol=0, atol=1e-5)


def test_a_gossip_cohort_in_flowers_simulation_equals_the_engine(sim, tmp_path):
    """Gossip-PGA's 8 graph nodes as logical clients on 3 SuperNodes."""
    import numpy as np

    from conf import load_config
    from engine import run as simulate

    overrides = {"strategy.name": "gossip_pga", "data.num_clients": 8, "strategy.period": 3,
                 "strategy.min_available_nodes": 3, "run.rounds": 4,
                 "run.output_dir": str(tmp_path), "run.name": "gossip-cohort"}
    status, output = sim.run(overrides, num_supernodes=3)
    assert status == "finished:completed", output[-3000:]
    nodes = torch.load(tmp_path / "gossip-cohort" / "node_models.pt")
    hosted = np.stack([np.concatenate([t.numpy().ravel() for t in nodes[i].values()]) for i in range(8)])
    assert np.abs(hosted - simulate(load_config(overrides), 8).X).max() < 1e-5
