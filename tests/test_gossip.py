"""Gossip-PGA: schedules, special cases as equivalences, and the hosted strategy's hooks
with fake replies (no Grid, no simulation)."""

from __future__ import annotations

import logging
import math
import random
import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

import tasks
from algorithms.gossip import GossipPGA as GossipAlgorithm
from client import protocol as P
from client.train import round_seed
from conf import load_config, to_flat
from engine import load_vector as _load
from engine import run as simulate
from engine import vector as _vector
from strategies import build_strategy
from strategies.gossip import NodeFailure, flatten
from strategies.schedule import MAX_PERIOD_FACTOR, AveragingSchedule, mix_step, modelled_cost, without_nodes
from strategies.topology import check_mixing_matrix, consensus_distance, ring
from tests.helpers import train_steps

# teacher regression, 64 training examples: equal IID partitions for n in {2, 4, 8}
SMALL = {"task.name": "teacher", "data.num_samples": 80, "data.partition": "iid",
         "model.width": 16, "train.lr": 0.05, "train.batch_size": 4,
         "strategy.name": "gossip_pga", "train.persist_optimizer_state": False}


# ------------------------------------------------------------------ schedules
def test_periodic_never_and_adaptive_schedules():
    periodic = AveragingSchedule("periodic", 4)
    assert [k for k in range(12) if periodic.is_global(k, 1.0)] == [3, 7, 11]
    assert not any(AveragingSchedule("never", 1).is_global(k, 1.0) for k in range(20))
    assert all(AveragingSchedule("periodic", 1).is_global(k, 1.0) for k in range(5))
    adaptive = AveragingSchedule("adaptive", 2)
    losses = {1: 4.0, 3: 1.0, 7: 0.25}  # F_0 = 4 at the first global average (k = 1)
    globals_ = [k for k in range(12) if adaptive.is_global(k, losses.get(k, 9.9))]
    # H_0 = ceil(2 sqrt(4/4)) = 2 -> k=3; H_1 = ceil(2 sqrt(4/1)) = 4 -> k=7;
    # H_2 = ceil(2 sqrt(4/0.25)) = 8 -> next at 15
    assert globals_ == [1, 3, 7] and adaptive.period == 8


@pytest.mark.parametrize("period", [0, -1, 2.5, True])
def test_a_period_below_one_is_rejected_when_built(period):
    with pytest.raises(ValueError, match="period H must be an integer >= 1"):
        AveragingSchedule("periodic", period)


def test_a_bad_mixing_matrix_is_rejected_when_the_strategy_is_built():
    bad = ring(4) * 1.1
    cfg = load_config({"strategy.name": "gossip_pga"})
    with pytest.raises(ValueError, match="row 0 sums to 1.1"):
        GossipAlgorithm(cfg, 4, mixing=lambda step: bad)
    with pytest.raises(ValueError, match="W has shape"):
        GossipAlgorithm(cfg, 5, mixing=lambda step: ring(4))


def test_gossip_step_keeps_the_mean_and_global_average_zeroes_consensus():
    Y = np.random.default_rng(0).normal(size=(8, 30)).astype(np.float32)
    X = mix_step(Y, ring(8), is_global=False)
    np.testing.assert_allclose(X.mean(0), Y.mean(0), atol=1e-6)
    assert 0 < consensus_distance(X) < consensus_distance(Y)
    assert consensus_distance(mix_step(Y, ring(8), is_global=True)) == 0.0


def test_modelled_costs():
    assert modelled_cost(ring(8), False, 1000) == (2000.0, 1)
    assert modelled_cost(ring(8), True, 1000) == (2 * 7 / 8 * 1000, 14)
    assert modelled_cost(np.eye(8), False, 1000) == (0.0, 0)


def test_dropping_a_node_rebuilds_a_doubly_stochastic_w():
    W = without_nodes(ring(6), [0, 1, 2, 4, 5])  # a 6-ring minus node 3 is a 5-path
    check_mixing_matrix(W)
    assert W[2, 3] == 0 and W[2, 1] > 0  # 2 and 4 were linked only through 3


# ------------------------------------------------------------------ equivalences
def test_identity_graph_is_local_sgd():
    """W = I with period H: independent local steps, a uniform average every H."""
    n, H, iterations = 4, 3, 7
    cfg = load_config({**SMALL, "strategy.topology": "identity", "strategy.period": H})
    got = simulate(cfg, n, iterations).X
    data = tasks.load_task(cfg)
    loss_fn, model = tasks.make_loss(cfg, data), tasks.make_model(cfg, data)
    splits = [tasks.client_split(cfg, i, n) for i in range(n)]
    X = np.tile(_vector(model), (n, 1))
    for k in range(iterations):
        for i in range(n):
            _load(model, X[i])
            train_steps(model, splits[i], loss_fn, steps=1, batch_size=4, lr=0.05,
                        seed=round_seed(cfg.run.seed, i, k + 1))
            X[i] = _vector(model)
        if (k + 1) % H == 0:
            X[:] = X.mean(axis=0, dtype=np.float64)
    np.testing.assert_array_equal(got, X)


def parallel_or_fedavg(cfg, n, iterations):
    """x <- sum_i n_i/n (x - eta g_i(x)): one local step from the common model, then the
    example-weighted mean (FedAvg with one local step = parallel SGD)."""
    data = tasks.load_task(cfg)
    loss_fn, model = tasks.make_loss(cfg, data), tasks.make_model(cfg, data)
    splits = [tasks.client_split(cfg, i, n) for i in range(n)]
    weights = np.array([len(s) for s in splits], dtype=np.float64) / sum(len(s) for s in splits)
    x = _vector(model)
    for k in range(iterations):
        updates = []
        for i in range(n):
            _load(model, x)
            train_steps(model, splits[i], loss_fn, steps=1, batch_size=4, lr=0.05,
                        seed=round_seed(cfg.run.seed, i, k + 1))
            updates.append(_vector(model).astype(np.float64))
        x = (weights @ np.stack(updates)).astype(np.float32)
    return x, weights


def test_period_one_is_parallel_sgd():
    cfg = load_config({**SMALL, "strategy.period": 1})
    got = simulate(cfg, 4, 6).X
    x, weights = parallel_or_fedavg(cfg, 4, 6)
    assert np.allclose(weights, 0.25)
    for row in got:
        np.testing.assert_allclose(row, x, rtol=0, atol=1e-6)


def test_fully_connected_gossip_is_fedavg_with_one_local_step():
    cfg = load_config({**SMALL, "strategy.topology": "fully_connected", "strategy.averaging": "never"})
    got = simulate(cfg, 8, 6).X
    x, weights = parallel_or_fedavg(cfg, 8, 6)
    assert np.allclose(weights, 1 / 8)  # equal-size partitions
    for row in got:
        np.testing.assert_allclose(row, x, rtol=0, atol=1e-6)


def test_every_global_average_leaves_the_nodes_in_consensus():
    """Only the invariant; that PGA beats Gossip SGD and Local SGD is a claim check
    (experiments.claims, tests/test_claims.py), which also rejects both mutants."""
    pga = simulate(load_config({**SMALL, "strategy.period": 4}), 8, 16).records
    assert [r["consensus_distance"] for r in pga[3::4]] == [0.0] * 4
    assert all(r["consensus_distance"] > 0 for i, r in enumerate(pga) if (i + 1) % 4)


# ------------------------------------------------------------------ hosted hooks
class FakeGrid:
    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return self.node_ids


def client_reply(message, partition_id, vector_offset, loss=1.0):
    arrays = {name: array.numpy() + vector_offset for name, array in message.content[P.ARRAYS].items()}
    metrics = MetricRecord({P.NUM_EXAMPLES: 10, P.TRAIN_LOSS: loss, P.INDEX: partition_id})
    record = ArrayRecord({k: torch.from_numpy(v) for k, v in arrays.items()})
    return Message(content=RecordDict({P.ARRAYS: record, P.METRICS: metrics}), reply_to=message)


def hosted(n, **overrides):
    cfg = load_config({"strategy.name": "gossip_pga", "strategy.min_available_nodes": 2,
                       "strategy.period": 3, **overrides})
    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)), num_nodes=n)
    start = ArrayRecord({"w": torch.zeros(3, 2), "b": torch.zeros(2)})
    return strategy, start


def test_hosted_rounds_mix_by_partition_id_not_reply_order(flower_identity):
    n = 4
    node_ids = [40, 10, 30, 20]
    partition_of = {40: 2, 10: 0, 30: 3, 20: 1}
    strategy, start = hosted(n)
    X = np.zeros((n, 8), np.float32)
    for server_round in (1, 2, 3):
        messages = list(strategy.configure_train(server_round, start, ConfigRecord(), FakeGrid(node_ids)))
        assert sorted(m.metadata.dst_node_id for m in messages) == sorted(node_ids)
        for m in messages:  # each node receives its own row of X
            i = partition_of[m.metadata.dst_node_id]
            np.testing.assert_allclose(flatten(m.content[P.ARRAYS])[0], X[i], atol=1e-6)
        replies = [client_reply(m, partition_of[m.metadata.dst_node_id],
                                float(partition_of[m.metadata.dst_node_id] + server_round))
                   for m in messages]
        random.Random(server_round).shuffle(replies)
        arrays, metrics = strategy.aggregate_train(server_round, replies)
        Y = X + (np.arange(n)[:, None] + server_round).astype(np.float32)
        X = mix_step(Y, ring(n), is_global=server_round % 3 == 0)
        np.testing.assert_allclose(strategy.X, X, atol=1e-6)
        np.testing.assert_allclose(flatten(arrays)[0], X.mean(0), atol=1e-6)
        assert metrics["global_average"] == int(server_round % 3 == 0)
        assert metrics["consensus_distance"] == pytest.approx(consensus_distance(X), abs=1e-9)
    assert strategy.node_of == {0: 10, 1: 20, 2: 40, 3: 30}


def run_round_one(strategy, start, node_ids):
    messages = list(strategy.configure_train(1, start, ConfigRecord(), FakeGrid(node_ids)))
    replies = [client_reply(m, i, 0.0) for i, m in enumerate(messages)]
    strategy.aggregate_train(1, replies)
    return list(strategy.configure_train(2, start, ConfigRecord(), FakeGrid(node_ids)))


def test_a_silent_node_stops_the_run_by_default(flower_identity):
    strategy, start = hosted(4)
    messages = run_round_one(strategy, start, [1, 2, 3, 4])
    replies = [client_reply(m, i, 0.0) for i, m in enumerate(messages)][:3]
    with pytest.raises(NodeFailure, match=r"graph node\(s\) \[3\] did not answer"):
        strategy.aggregate_train(2, replies)


def test_renormalize_drops_the_node_and_averages_the_rest(flower_identity, caplog):
    strategy, start = hosted(4, **{"strategy.failure_policy": "renormalize"})
    messages = run_round_one(strategy, start, [1, 2, 3, 4])
    replies = [client_reply(m, i, float(i)) for i, m in enumerate(messages)][:3]
    arrays, metrics = strategy.aggregate_train(2, replies)
    assert strategy.active == [0, 1, 2] and metrics["active_nodes"] == 3
    assert "dropped graph node(s) [3]" in caplog.text
    # the mean over the three remaining nodes is kept by the rebuilt (doubly stochastic) W
    assert flatten(arrays)[0].mean() == pytest.approx(np.mean([0.0, 1.0, 2.0]), abs=1e-6)
    assert len(list(strategy.configure_train(3, start, ConfigRecord(), FakeGrid([1, 2, 3, 4])))) == 3


def test_an_error_reply_is_logged_with_its_reason_and_follows_the_policy(flower_identity, caplog):
    from flwr.app import Error

    strategy, start = hosted(4)
    messages = run_round_one(strategy, start, [1, 2, 3, 4])
    replies = [client_reply(m, i, 0.0) for i, m in enumerate(messages)][:3]
    replies.append(Message(Error(code=0, reason="no partition-id"), reply_to=messages[3]))
    with pytest.raises(NodeFailure, match=r"graph node\(s\) \[3\] did not answer"):
        strategy.aggregate_train(2, replies)
    node = messages[3].metadata.dst_node_id
    assert f"Round 2: node {node} replied with an error: no partition-id" in caplog.text


def test_partition_ids_must_cover_the_graph(flower_identity, caplog):
    strategy, start = hosted(3)
    messages = list(strategy.configure_train(1, start, ConfigRecord(), FakeGrid([1, 2, 3])))
    replies = [client_reply(m, 0, 0.0) for m in messages]  # everyone claims index 0
    with caplog.at_level(logging.WARNING, logger="flwr"), \
            pytest.raises(NodeFailure, match=r"graph node\(s\) \[0, 1, 2\] did not answer"):
        strategy.aggregate_train(1, replies)
    assert re.search(r"nodes \[\d, \d, \d\] all claim graph index 0; none is placed there", caplog.text)


def test_aga_period_grows_as_loss_falls_in_the_reference():
    cfg = load_config({**SMALL, "strategy.averaging": "adaptive", "strategy.period": 2,
                       "train.lr": 0.2})
    records = simulate(cfg, 4, 40).records
    averages = [r for r in records if r["global_average"]]
    first_loss = averages[0]["train_loss_median"]  # F: the median of the nodes' losses
    for record in averages:  # H_l = ceil(H_init sqrt(F_0 / F_l)), set at each global average
        ratio = min(math.sqrt(first_loss / record["train_loss_median"]), MAX_PERIOD_FACTOR)
        assert record["period"] == math.ceil(2 * ratio)
    assert averages[0]["period"] == 2 and averages[-1]["period"] > 2  # grew as the loss fell
    gaps = np.diff([r["iteration"] for r in averages])
    assert list(gaps) == [r["period"] for r in averages[:-1]]
