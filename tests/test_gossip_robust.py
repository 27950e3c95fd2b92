"""Gossip-PGA under hostile or broken nodes: a bad reply costs only its own node (under
``renormalize``), never a KeyError, never the honest nodes; the adaptive period cannot be
steered by one loss; a robust global average resists a huge node model."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client import protocol as P
from conf import load_config, to_flat
from strategies import build_strategy
from strategies.gossip import NodeFailure
from strategies.schedule import MAX_PERIOD_FACTOR, AveragingSchedule, loss_statistic
from tests.test_gossip import FakeGrid
from tests.test_replies import raw_array

NODE_IDS = [10, 20, 30, 40]  # node 10k holds graph index k - 1


def hosted(n=4, **overrides):
    cfg = load_config({"strategy.name": "gossip_pga", "strategy.min_available_nodes": 2,
                       "strategy.period": 3, "strategy.failure_policy": "renormalize",
                       **overrides})
    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)), num_nodes=n)
    return strategy, ArrayRecord({"w": torch.zeros(3, 2), "b": torch.zeros(2)})


def good(message, offset: float, loss=1.0, **metric_changes):
    index = message.metadata.dst_node_id // 10 - 1
    arrays = {name: array.numpy() + offset for name, array in message.content[P.ARRAYS].items()}
    metrics = {P.TRAIN_LOSS: loss, P.INDEX: index, P.NUM_EXAMPLES: 10, **metric_changes}
    metrics = {k: v for k, v in metrics.items() if v is not None}
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(content=RecordDict({P.ARRAYS: record, P.METRICS: MetricRecord(metrics)}),
                   reply_to=message)


def one_round(strategy, start, server_round, rogue=None):
    """Every node replies y_i = x_i + (index + 1); node 40 as ``rogue(message)`` says."""
    messages = list(strategy.configure_train(server_round, start, ConfigRecord(), FakeGrid(NODE_IDS)))
    replies = []
    for m in messages:
        node = m.metadata.dst_node_id
        replies.append(rogue(m) if rogue is not None and node == 40 else good(m, node / 10))
    return strategy.aggregate_train(server_round, replies)


def rogue_array(value):
    def make(message):
        reply = good(message, 4.0)
        items = dict(reply.content[P.ARRAYS].items())
        items["w"] = raw_array(value)
        return Message(content=RecordDict({P.ARRAYS: ArrayRecord(items),
                                           P.METRICS: reply.content[P.METRICS]}), reply_to=message)
    return make


ROGUES = {
    "complex-nan": rogue_array(np.full((3, 2), np.nan + 1j * np.nan, np.complex64)),
    "float64-1e300": rogue_array(np.full((3, 2), 1e300)),
    "missing-partition-id": lambda m: good(m, 4.0, **{P.INDEX: None}),
    "missing-train-loss": lambda m: good(m, 4.0, **{P.TRAIN_LOSS: None}),
    "fractional-partition-id": lambda m: good(m, 4.0, **{P.INDEX: 2.7}),
    "partition-id-out-of-range": lambda m: good(m, 4.0, **{P.INDEX: 9}),
    "error-reply": lambda m: Message(__import__("flwr.app", fromlist=["Error"]).Error(
        code=0, reason="broken"), reply_to=m),
}


@pytest.mark.parametrize("round_of_attack", [1, 2])
@pytest.mark.parametrize("case", list(ROGUES))
def test_a_bad_node_is_dropped_and_only_it(flower_identity, caplog, case, round_of_attack):
    strategy, start = hosted()
    with caplog.at_level(logging.WARNING, logger="flwr"):
        for server_round in range(1, 4):
            rogue = ROGUES[case] if server_round == round_of_attack else None
            arrays, metrics = one_round(strategy, start, server_round, rogue)
            start = arrays
    assert strategy.active == [0, 1, 2]  # the honest nodes stay, the rogue is gone
    assert "dropped graph node(s) [3]" in caplog.text
    assert np.isfinite(strategy.X).all()
    if case != "error-reply":
        assert "Rejected the reply of node 40" in caplog.text


def test_a_bad_node_stops_the_run_under_the_stop_policy_with_a_message(flower_identity):
    strategy, start = hosted(**{"strategy.failure_policy": "stop"})
    one_round(strategy, start, 1)
    with pytest.raises(NodeFailure, match=r"graph node\(s\) \[3\] did not answer in time or sent "
                                          r"an unusable reply"):
        one_round(strategy, start, 2, ROGUES["missing-train-loss"])


def test_renormalize_stops_below_min_gossip_nodes(flower_identity):
    strategy, start = hosted(**{"strategy.min_gossip_nodes": 4})
    one_round(strategy, start, 1)
    with pytest.raises(NodeFailure, match=r"would leave 3 node\(s\), fewer than "
                                          r"strategy.min_gossip_nodes=4"):
        one_round(strategy, start, 2, ROGUES["complex-nan"])


def test_a_node_that_changes_its_index_is_dropped_not_trusted(flower_identity, caplog):
    strategy, start = hosted()
    one_round(strategy, start, 1)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        one_round(strategy, start, 2, lambda m: good(m, 4.0, **{P.INDEX: 0}))
    assert strategy.active == [0, 1, 2] and strategy.node_of[0] == 10
    assert "reports partition-id 0, but holds graph index 3" in caplog.text


def test_one_crafted_loss_cannot_switch_global_averaging_off():
    """Gossip-AGA reads the median of the losses, and H <= 16 H_init whatever they say."""
    assert loss_statistic([1.0, 1.1, 0.9, 1e-12]) == pytest.approx(0.95)
    schedule = AveragingSchedule("adaptive", 2)
    schedule.is_global(1, loss_statistic([1.0, 1.0, 1.0, 1.0]))  # F_0 = 1
    schedule.is_global(3, 1e-300)  # even if every node lies
    assert schedule.period == 2 * MAX_PERIOD_FACTOR


def test_a_robust_global_average_resists_a_huge_node(flower_identity):
    """At a global average (period 1), a robust mean of the node models (1, 2, 3 and 1e30
    in every coordinate) ignores the node at 1e30; the plain mean does not. The default
    mixes first (NNM over 4 nodes: each node's 3 nearest), so the honest nodes become 2 and
    the median is 2; the bare median of 1, 2, 3, 1e30 is 2.5."""
    huge = lambda m: good(m, 1e30)  # noqa: E731
    for name, pre, bounded in (("median", "none", True), ("median", "auto", True),
                               ("geometric_median", "auto", True), ("mean", "auto", False)):
        strategy, start = hosted(**{"strategy.period": 1, "strategy.aggregator": name,
                                    "strategy.pre_aggregation": pre})
        arrays, _ = one_round(strategy, start, 1, huge)
        w = arrays["w"].numpy()
        assert (np.abs(w) < 10).all() == bounded, name
        if name == "median":
            np.testing.assert_allclose(w, np.full((3, 2), 2.5 if pre == "none" else 2.0, np.float32),
                                       rtol=1e-6)
        if name == "geometric_median":
            assert ((w >= 1) & (w <= 3)).all()
    assert math.isfinite(float(w[0, 0]))
