"""deploy.launch without starting anything: launch settings and SuperNode command lines."""

from __future__ import annotations

import os

import pytest

from deploy.launch import LocalDeployment, deployment_env, toml_value


def test_deployment_env_splits_the_cores_and_defers_to_the_caller(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert deployment_env(2)["OMP_NUM_THREADS"] == "4"
    assert deployment_env(16)["OMP_NUM_THREADS"] == "1"
    assert deployment_env(2)["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.2"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert "OMP_NUM_THREADS" not in deployment_env(2)  # the user's setting wins
    deployment = LocalDeployment(2, env={"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1"})
    assert deployment.env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "1"  # env= wins too
    assert deployment.env["OMP_NUM_THREADS"] == "3"


def test_supernode_command_lines(tmp_path):
    insecure = LocalDeployment(3, flwr_home=tmp_path, node_config={1: "data-path='/d/x.npz'"})
    cmd = insecure.node_command(1)
    assert "--insecure" in cmd and "--root-certificates" not in cmd
    node_config = "partition-id=1 num-partitions=3 warm-worker=120 data-path='/d/x.npz'"
    assert cmd[cmd.index("--node-config") + 1] == node_config
    secure = LocalDeployment(3, flwr_home=tmp_path, secure=True)
    cmd = secure.node_command(2)
    assert "--insecure" not in cmd
    assert cmd[cmd.index("--root-certificates") + 1] == str(tmp_path / "certs" / "ca.crt")
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(tmp_path / "certs" / "supernode-2")
    assert cmd[cmd.index("--node-config") + 1] == "partition-id=2 num-partitions=3 warm-worker=120"
    # no warm worker, or the caller's own setting for one node
    cold = LocalDeployment(2, flwr_home=tmp_path, warm_worker=0, node_config={1: "warm-worker=5"})
    assert [cold.node_command(i)[-1] for i in (0, 1)] == [
        "partition-id=0 num-partitions=2", "partition-id=1 num-partitions=2 warm-worker=5"]


def test_toml_values():
    assert [toml_value(v) for v in (True, 3, 0.5, "a'b")] == ["true", "3", "0.5", '"a\'b"']


def _no_runtime(monkeypatch):
    """Make starting a Flower runtime an error: a check must stop the launcher first."""
    import deploy.launch as launch

    def refuse(*args, **kwargs):
        raise AssertionError("the launcher started a runtime for a bad config")

    monkeypatch.setattr(launch, "LocalSimulation", refuse)
    monkeypatch.setattr(launch, "LocalDeployment", refuse)
    return launch


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--run-config", "train.lrr=0.1"], "Unknown config key 'train.lrr'"),
        (["--run-config", "train.lr = 0.1"], "Cannot read 'train.lr = 0.1'"),
        (["--run-config", "task.name=mnist"], "strings need quotes: task.name='mnist'"),
        (["--run-config", "train.lr=inf"], "'train.lr'"),
        (["--num-supernodes", "1", "--run-config", "strategy.name='gossip_pga'"], "gossip_pga needs"),
        (["--num-supernodes", "4", "--run-config", "strategy.min_replies=5"], "strategy.min_replies = 5"),
        (["--deployment", "--num-supernodes", "1", "--run-config",
          "strategy.name='gossip_pga' strategy.min_train_nodes=1"], "gossip_pga needs at least 2 nodes"),
    ],
)
def test_launcher_checks_the_overrides_before_starting_anything(monkeypatch, capsys, argv, message):
    launch = _no_runtime(monkeypatch)
    assert launch.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and message in err


def test_launcher_checks_deployment_overrides_as_the_deployment_runs_them(monkeypatch):
    """A deployment run waits for all N nodes (strategy.min_available_nodes = N), so 3
    nodes with strategy.min_train_nodes = 3 is fine there; the check agrees."""
    launch = _no_runtime(monkeypatch)
    launch.check_overrides({"strategy.min_train_nodes": 3}, num_supernodes=3, deployment=True)
    with pytest.raises(launch.ConfigError, match="strategy.min_available_nodes = 2 .* 1 node"):
        launch.check_overrides({}, num_supernodes=1, deployment=False)
