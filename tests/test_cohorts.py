"""Cohorts (``data.num_clients`` > 0): many logical clients per SuperNode. A cohort run
through the Flower strategy's own round loop (``FedAvg.start``, with the real ClientApp
handlers behind a fake Grid) equals the engine, which runs every logical client in one
process, and so the run with one SuperNode per client; replies are checked per client."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import MessageType

import algorithms
import engine
import tasks
from client import handlers
from client import protocol as P
from conf import load_config, to_flat
from strategies import build_strategy
from tests.test_clipped import FIXED

CLIENTS, NODES = 8, 3
COHORT = {**FIXED, "data.num_clients": CLIENTS, "data.num_samples": 144,
          "strategy.min_train_nodes": 2, "strategy.min_available_nodes": NODES,
          "train.batch_size": 4, "train.local_steps": 3, "train.lr": 0.1,
          "strategy.clip_gamma": 0.05, "train.momentum": 0.9,
          "train.persist_optimizer_state": True}


class CohortGrid:
    """SuperNodes in this process: each message goes to the real ClientApp handler with the
    node's own context (its state persists across rounds)."""

    def __init__(self, nodes: int, tamper=None):
        self.contexts = {100 + p: Context(run_id=1, node_id=100 + p, state=RecordDict(), run_config={},
                                          node_config={P.PARTITION_ID: p, P.NUM_PARTITIONS: nodes})
                         for p in range(nodes)}
        self.tamper = tamper  # (node id, reply) -> reply, to play a hostile node
        self.messages: list[Message] = []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            self.messages.append(message)
            node = message.metadata.dst_node_id
            kind = "query" if message.metadata.message_type == MessageType.QUERY else "train"
            reply = getattr(handlers, kind)(message, self.contexts[node])
            if self.tamper is not None and kind == "train":
                reply = self.tamper(node, reply)
            replies.append(reply)
        return replies


def hosted(cfg, rounds: int, grid: CohortGrid):
    model = tasks.make_model(cfg, tasks.load_task(cfg))
    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)))
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds)
    return result.arrays.to_torch_state_dict(), strategy


SERVER_CENTRED = [n for n in algorithms.names() if not algorithms.get(n).decentralized]


@pytest.mark.parametrize("fraction", [1.0, 0.5])
@pytest.mark.parametrize("name", SERVER_CENTRED)
def test_a_cohort_run_equals_the_engine(flower_identity, name, fraction):
    extra = {"strategy.proximal_mu": 0.5} if name == "fedprox" else {}
    cfg = load_config({**COHORT, **extra, "strategy.name": name, "strategy.fraction_train": fraction})
    grid = CohortGrid(NODES)
    state, strategy = hosted(cfg, 3, grid)
    want = engine.run(cfg, CLIENTS, rounds=3).state
    for key, value in want.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6)
    trains = [m for m in grid.messages if m.metadata.message_type == MessageType.TRAIN]
    queries = [m for m in grid.messages if m.metadata.message_type == MessageType.QUERY]
    assert len(queries) == NODES  # the partition-ids are asked once
    assert len(trains) <= 3 * NODES  # one message per node and round, not per client
    sent = sorted(c for m in trains if m.content[P.CONFIG][P.SERVER_ROUND] == 1
                  for c in m.content[P.CONFIG][P.CLIENTS])
    assert sent == engine.sampled_clients(cfg, CLIENTS, 3)[0]
    for m in trains:  # each node is sent only the clients it hosts
        p = grid.contexts[m.metadata.dst_node_id].node_config[P.PARTITION_ID]
        assert all(c % NODES == p for c in m.content[P.CONFIG][P.CLIENTS])
    assert strategy.round_metrics[3][P.NUM_EXAMPLES] > 0


def nan_client(client: int):
    def tamper(node, reply):
        arrays_key, _ = P.cohort_keys(client)
        if arrays_key in reply.content.array_records:
            record = reply.content.array_records[arrays_key]
            first = next(iter(record))
            bad = record[first].numpy().copy()
            bad[...] = np.nan
            record[first] = type(record[first]).from_numpy_ndarray(bad)
        return reply
    return tamper


def test_a_bad_client_in_a_cohort_is_left_out_alone(flower_identity, caplog):
    cfg = load_config({**COHORT, "strategy.name": "fedavg"})
    _, strategy = hosted(cfg, 1, CohortGrid(NODES, tamper=nan_client(4)))
    assert strategy.round_metrics[1]["num_replies"] == CLIENTS - 1
    assert "rejected client 4 of node 101" in caplog.text


def test_a_cohort_reply_that_names_other_clients_is_rejected_whole(flower_identity, caplog):
    def rename(node, reply):
        if node != 100:
            return reply
        arrays_key, metrics_key = P.cohort_keys(0)
        content = reply.content
        content[P.cohort_keys(99)[0]] = content.array_records[arrays_key]
        content[P.cohort_keys(99)[1]] = content.metric_records[metrics_key]
        del content[arrays_key], content[metrics_key]
        return reply

    cfg = load_config({**COHORT, "strategy.name": "fedavg"})
    _, strategy = hosted(cfg, 1, CohortGrid(NODES, tamper=rename))
    hosted_by_100 = len([c for c in range(CLIENTS) if c % NODES == 0])
    assert strategy.round_metrics[1]["num_replies"] == CLIENTS - hosted_by_100
    assert "Rejected the reply of node 100" in caplog.text


def test_a_node_refuses_clients_it_does_not_host(flower_identity):
    cfg = load_config({**COHORT, "strategy.name": "fedavg"})
    model = tasks.make_model(cfg, tasks.load_task(cfg))
    message = Message(content=RecordDict({
        P.ARRAYS: ArrayRecord(model.state_dict()),
        P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1, P.CLIENTS: [1]}),
        P.RUN_CONFIG: ConfigRecord(to_flat(cfg))}), dst_node_id=100, message_type=MessageType.TRAIN)
    with pytest.raises(ValueError, match="hosts the clients c with c % num-partitions == partition-id"):
        handlers.train(message, CohortGrid(NODES).contexts[100])


@pytest.mark.parametrize("aggregator", ["mean", "median"])
def test_a_gossip_cohort_equals_the_engine(flower_identity, aggregator):
    """Gossip-PGA with its 8 graph nodes as logical clients on 3 SuperNodes: each node is
    sent the models of the graph nodes it hosts, and the node models equal the engine's."""
    cfg = load_config({**COHORT, "strategy.name": "gossip_pga", "train.local_steps": 1,
                       "strategy.period": 3, "strategy.aggregator": aggregator})
    model = tasks.make_model(cfg, tasks.load_task(cfg))
    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)), num_nodes=CLIENTS)
    grid = CohortGrid(NODES)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=5)
    want = engine.run(cfg, CLIENTS, 5).X
    np.testing.assert_allclose(strategy.X, want, rtol=0, atol=1e-6)
    assert np.abs(want - want.mean(0)).max() > 1e-4  # iteration 5 is a gossip step
    trains = [m for m in grid.messages if m.metadata.message_type == MessageType.TRAIN]
    assert len(trains) == 5 * NODES
    assert strategy.round_metrics[5]["num_replies"] == CLIENTS


def test_a_gossip_cohort_client_that_fails_follows_the_failure_policy(flower_identity, caplog):
    cfg = load_config({**COHORT, "strategy.name": "gossip_pga", "train.local_steps": 1,
                       "strategy.failure_policy": "renormalize"})
    model = tasks.make_model(cfg, tasks.load_task(cfg))
    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)), num_nodes=CLIENTS)
    strategy.start(grid=CohortGrid(NODES, tamper=nan_client(4)),
                   initial_arrays=ArrayRecord(model.state_dict()), num_rounds=2)
    assert 4 not in strategy.active and len(strategy.active) == CLIENTS - 1
    assert "rejected client 4 of node 101" in caplog.text


def test_a_silo_reads_each_clients_own_file(flower_identity, tmp_path):
    """A SuperNode whose data-path is a folder (a silo of data owners): logical client c
    trains on client-<c>.npz there. Files holding the central slices give the engine's model."""
    cfg = load_config({**COHORT, "strategy.name": "fedavg"})
    for c in range(CLIENTS):
        split = tasks.client_split(cfg, c, CLIENTS)
        np.savez(tmp_path / f"client-{c}.npz", x=split.x.numpy(), y=split.y.numpy())
    grid = CohortGrid(NODES)
    for context in grid.contexts.values():
        context.node_config[P.DATA_PATH] = str(tmp_path)
    state, _ = hosted(cfg, 2, grid)
    want = engine.run(cfg, CLIENTS, rounds=2).state
    for key, value in want.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6)
    (tmp_path / "client-4.npz").unlink()
    with pytest.raises(Exception, match="client-4.npz"):
        hosted(cfg, 1, grid)
