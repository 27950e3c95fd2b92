"""FedAvg's hooks with fake replies (no Grid, no simulation), and FedAvg == centralized GD."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

import tasks
from client import app as client_app
from client import protocol as P
from conf import load_config, to_flat
from strategies import build_strategy

# Flower's node sampling waits (forever) until min_available_nodes are connected.
ONE_NODE = {"strategy.min_train_nodes": 1, "strategy.min_available_nodes": 1}


class FakeGrid:
    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return self.node_ids


def reply_to(message, arrays: dict, num_examples: int, loss: float = 1.0):
    metrics = MetricRecord({P.NUM_EXAMPLES: num_examples, P.TRAIN_LOSS: loss})
    record = ArrayRecord({k: torch.as_tensor(v) for k, v in arrays.items()})
    return Message(content=RecordDict({P.ARRAYS: record, P.METRICS: metrics}), reply_to=message)


def setup_round(cfg, arrays: dict, node_ids):
    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)))
    record = ArrayRecord({k: torch.as_tensor(v) for k, v in arrays.items()})
    messages = list(strategy.configure_train(1, record, ConfigRecord(), FakeGrid(node_ids)))
    return strategy, messages


def test_aggregate_is_the_example_weighted_mean(flower_identity):
    cfg = load_config({"strategy.min_train_nodes": 3, "strategy.min_available_nodes": 3,
                       "strategy.weighting": "examples"})
    rng = np.random.default_rng(0)
    shapes = {"w": (4, 3), "b": (3,)}
    start = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    strategy, messages = setup_round(cfg, start, [11, 12, 13])
    assert sorted(m.metadata.dst_node_id for m in messages) == [11, 12, 13]
    assert all(P.RUN_CONFIG in m.content.config_records for m in messages)
    updates = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in messages]
    sizes, losses = [5, 20, 75], [3.0, 2.0, 1.0]
    replies = [reply_to(m, u, n, loss) for m, u, n, loss in zip(messages, updates, sizes, losses)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    weights = np.array(sizes) / sum(sizes)
    for key in shapes:
        expected = sum(w * u[key].astype(np.float64) for w, u in zip(weights, updates))
        np.testing.assert_allclose(arrays[key].numpy(), expected, rtol=0, atol=1e-6)
    assert metrics[P.TRAIN_LOSS] == pytest.approx(float(np.dot(weights, losses)))
    assert metrics["num_replies"] == 3 and metrics["num_failures"] == 0
    sent_per_node = sum(a.nbytes for a in start.values())
    assert metrics["bytes_sent"] > 3 * sent_per_node  # tensors plus the config records
    assert metrics["bytes_received"] >= 3 * sent_per_node
    assert strategy.round_metrics[1]["bytes_sent"] == metrics["bytes_sent"]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"w": np.full((2, 2), np.nan, np.float32)}, "holds NaN or infinite values"),
        ({"w": np.zeros((3, 2), np.float32)}, "has shape (3, 2), expected (2, 2)"),
        ({"v": np.zeros((2, 2), np.float32)}, "array names differ"),
    ],
)
def test_bad_replies_never_enter_the_average(flower_identity, caplog, bad, reason):
    cfg = load_config()
    strategy, messages = setup_round(cfg, {"w": np.zeros((2, 2), np.float32)}, [1, 2])
    good = reply_to(messages[0], {"w": np.ones((2, 2), np.float32)}, 10)
    poisoned = reply_to(messages[1], bad, 1000)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, [good, poisoned])
    np.testing.assert_array_equal(arrays["w"].numpy(), np.ones((2, 2), np.float32))
    assert metrics["num_failures"] == 1 and metrics["num_replies"] == 1
    node = messages[1].metadata.dst_node_id
    assert f"Rejected the reply of node {node}: " in caplog.text and reason in caplog.text


def test_silent_nodes_are_logged_and_the_round_goes_on(flower_identity, caplog):
    cfg = load_config({"strategy.min_train_nodes": 3, "strategy.min_available_nodes": 3})
    strategy, messages = setup_round(cfg, {"w": np.zeros((2, 2), np.float32)}, [1, 2, 3])
    replies = [reply_to(m, {"w": np.full((2, 2), float(k), np.float32)}, 10)
               for k, m in enumerate(messages[:2])]  # node 3 was killed: no reply at all
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(arrays["w"].numpy(), np.full((2, 2), 0.5, np.float32))
    assert metrics["num_replies"] == 2 and metrics["num_failures"] == 1
    silent = messages[2].metadata.dst_node_id  # sampling shuffles the nodes
    assert f"Round 1: no reply from node(s) {silent}; going on with 2 reply(ies)." in caplog.text


def test_fewer_sound_replies_than_min_replies_stop_the_run(flower_identity):
    from strategies.fedavg import DropoutError

    cfg = load_config({"strategy.min_train_nodes": 3, "strategy.min_available_nodes": 3,
                       "strategy.min_replies": 2})
    strategy, messages = setup_round(cfg, {"w": np.zeros((2, 2), np.float32)}, [1, 2, 3])
    good = reply_to(messages[0], {"w": np.ones((2, 2), np.float32)}, 10)
    poisoned = reply_to(messages[1], {"w": np.full((2, 2), np.inf, np.float32)}, 10)
    silent = messages[2].metadata.dst_node_id
    with pytest.raises(DropoutError, match=rf"only 1 sound reply\(ies\) of 3 sent.*min_replies=2"
                                          rf".*silent: \[{silent}\]"):
        strategy.aggregate_train(1, [good, poisoned])


def test_a_round_waits_for_min_available_nodes_then_says_so(flower_identity):
    cfg = load_config({"strategy.min_available_nodes": 3, "strategy.node_wait": 0.05})
    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)))
    record = ArrayRecord({"w": torch.zeros(2)})
    with pytest.raises(RuntimeError, match="Only 2 SuperNode.*min_available_nodes = 3"):
        strategy.configure_train(2, record, ConfigRecord(), FakeGrid([1, 2]))


def client_context(partition_id, num_partitions):
    return Context(run_id=1, node_id=partition_id + 100, state=RecordDict(), run_config={},
                   node_config={P.PARTITION_ID: partition_id, P.NUM_PARTITIONS: num_partitions})


def client_round(cfg, message, partition_id, num_partitions, context=None):
    """The real ClientApp handler; pass the same ``context`` across rounds to keep state."""
    return client_app.train(message, context or client_context(partition_id, num_partitions))


def test_one_full_batch_step_on_iid_partitions_equals_centralized_gd(flower_identity):
    """sum_k n_k/n (x - eta g_k) = x - eta g, with g_k the mean gradient on partition k."""
    clients = 4
    cfg = load_config({
        "data.partition": "iid", "train.local_epochs": 1, "train.batch_size": 100_000,
        "train.lr": 0.5, "strategy.min_train_nodes": clients,
        "strategy.min_available_nodes": clients, "strategy.weighting": "examples",
    })
    data = tasks.load_task(cfg)
    model = tasks.make_model(cfg, data)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    strategy, messages = setup_round(cfg, start, range(clients))
    replies = [client_round(cfg, m, i, clients) for i, m in enumerate(messages)]
    assert [int(r.content[P.METRICS][P.NUM_STEPS]) for r in replies] == [1] * clients
    sizes = [int(r.content[P.METRICS][P.NUM_EXAMPLES]) for r in replies]
    assert sum(sizes) == len(data.train) and max(sizes) - min(sizes) <= 1
    arrays, _ = strategy.aggregate_train(1, replies)

    model.load_state_dict(start)
    loss = tasks.make_loss(cfg, data)(model(data.train.x), data.train.y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    names = [name for name, _ in model.named_parameters()]
    for name, grad in zip(names, grads):
        centralized = start[name] - cfg.train.lr * grad
        torch.testing.assert_close(arrays[name].numpy(), centralized.numpy(), rtol=0, atol=2e-6)
    moved = max(float((arrays[n].numpy() - start[n].numpy()).__abs__().max()) for n in names)
    assert moved > 1e-3  # the step is far larger than the tolerance


def test_client_keeps_momentum_in_context_state(flower_identity):
    cfg = load_config({"train.momentum": 0.9, "train.persist_optimizer_state": True,
                       "train.local_steps": 2, **ONE_NODE})
    data = tasks.load_task(cfg)
    start = tasks.make_model(cfg, data).state_dict()
    _, messages = setup_round(cfg, start, [0])
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                      node_config={P.PARTITION_ID: 0, P.NUM_PARTITIONS: 2})
    client_app.train(messages[0], context)
    saved = context.state.array_records[P.STATE_MOMENTUM].to_torch_state_dict()
    assert [saved[str(i)].shape for i in range(len(saved))] == [p.shape for p in start.values()]
    assert all(bool(b.abs().sum() > 0) for b in saved.values())


def test_client_without_partition_config_says_how_to_fix(flower_identity):
    cfg = load_config(ONE_NODE)
    start = tasks.make_model(cfg, tasks.load_task(cfg)).state_dict()
    _, messages = setup_round(cfg, start, [0])
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config={}, node_config={})
    with pytest.raises(ValueError, match="--node-config 'partition-id=0 num-partitions=2'"):
        client_app.train(messages[0], context)
