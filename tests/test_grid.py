"""server.grid.PollingGrid: Flower's send_and_receive semantics with its own poll interval,
"waiting for node(s) ..." lines while replies are outstanding, and an unreachable node's
error reply (written by the SuperLink) attributed to that node, counted once by FedAvg."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

from client import protocol as P
from conf import load_config, to_flat
from server.grid import DEPLOYMENT_POLL, SIMULATION_POLL, PollingGrid
from strategies import build_strategy


def sent(node: int, kind: str = "train"):
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node, message_type=kind))


class ScriptedGrid:
    """Replies to message i become available at pull number ``ready[i]``."""

    def __init__(self, ready: list[int]):
        self.ready, self.pulls, self.delivered = ready, 0, set()

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        out = []
        for i, due in enumerate(self.ready):
            if f"m{i}" in ids and due <= self.pulls and i not in self.delivered:
                self.delivered.add(i)
                out.append(SimpleNamespace(
                    metadata=SimpleNamespace(reply_to_message_id=f"m{i}", src_node_id=10 + i),
                    has_error=lambda: False))
        return out

    def get_node_ids(self):
        return [7, 8]


def test_collects_every_reply_polling_at_its_own_interval():
    grid = PollingGrid(ScriptedGrid([1, 3, 5]), interval=0.01)
    start = time.monotonic()
    replies = grid.send_and_receive([sent(10), sent(11), sent(12)], timeout=10)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert grid.pulls == 5  # stops as soon as the last reply is in
    assert time.monotonic() - start < 1.0  # Flower's deployment grid would sleep 3 s per poll


def test_timeout_returns_the_replies_so_far():
    grid = PollingGrid(ScriptedGrid([1, 10**9]), interval=0.01)
    start = time.monotonic()
    replies = grid.send_and_receive([sent(10), sent(11)], timeout=0.1)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.1 <= time.monotonic() - start < 1.0


def test_passes_everything_else_through_and_picks_the_interval_by_grid_kind():
    inner = ScriptedGrid([1])
    assert PollingGrid(inner).get_node_ids() == [7, 8]
    assert PollingGrid(inner).interval == DEPLOYMENT_POLL
    inner.pull_interval = 0.1  # what Flower's InMemoryGrid (simulation) has
    assert PollingGrid(inner).interval == SIMULATION_POLL


def test_logs_which_nodes_it_waits_for_every_few_seconds(caplog):
    grid = PollingGrid(ScriptedGrid([1, 10**9, 10**9]), interval=0.01, log_every=0.05)
    with caplog.at_level(logging.INFO, logger="flwr"):
        replies = grid.send_and_receive([sent(10), sent(11), sent(12)], timeout=0.3)
    assert len(replies) == 1
    lines = [r.getMessage() for r in caplog.records if "Waiting for" in r.getMessage()]
    assert 2 <= len(lines) <= 6  # one per 0.05 s of the 0.3 s wait, not one per 0.01 s poll
    assert lines[0].startswith("Waiting for train replies: 1 of 3 in after 0 s; still waiting "
                               "for node(s) 11, 12 (giving up in ")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flwr"):
        PollingGrid(ScriptedGrid([1, 10**9]), interval=0.01, log_every=0.02).send_and_receive(
            [sent(10), sent(11, "evaluate")], timeout=0.1)
    assert "Waiting for evaluate/train replies: 1 of 2 in" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flwr"):  # every reply in at once: nothing to say
        PollingGrid(ScriptedGrid([1, 1]), interval=0.01, log_every=0).send_and_receive(
            [sent(10), sent(11)], timeout=1)
    assert "Waiting for" not in caplog.text


# --------------------------------------------- an unreachable node's error reply, counted once
class FlowerLikeGrid:
    """Gives each pushed message its id in place, as Flower's grids do; a node in
    ``unreachable`` gets the error reply Flower's SuperLink writes, from its own node id; a
    node in ``silent`` gets nothing; the others a sound reply."""

    def __init__(self, unreachable=(), silent=()):
        self.unreachable, self.silent, self.sent = set(unreachable), set(silent), {}

    def push_messages(self, messages):
        for i, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"msg-{i}"
            self.sent[f"msg-{i}"] = message
        return list(self.sent)

    def pull_messages(self, ids):
        out = []
        for mid in list(ids):
            message = self.sent.pop(mid, None)
            node = message.metadata.dst_node_id if message else None
            if message is None or node in self.silent:
                continue
            if node in self.unreachable:
                out.append(create_message_error_unavailable_res_message(message.metadata,
                                                                        "node_unavail"))
            else:
                out.append(sound_reply(message))
        return out


def sound_reply(message):
    metrics = MetricRecord({P.NUM_EXAMPLES: 10, P.TRAIN_LOSS: 1.0})
    record = ArrayRecord({"w": torch.ones(2, 2)})
    return Message(content=RecordDict({P.ARRAYS: record, P.METRICS: metrics}), reply_to=message)


def train_round(nodes):
    cfg = load_config({"strategy.min_train_nodes": len(nodes),
                       "strategy.min_available_nodes": len(nodes), "strategy.min_replies": 1})
    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)))
    grid = SimpleNamespace(get_node_ids=lambda: list(nodes))
    messages = list(strategy.configure_train(1, ArrayRecord({"w": torch.zeros(2, 2)}),
                                             ConfigRecord(), grid))
    return strategy, messages


def test_an_unreachable_nodes_error_reply_is_its_own_and_counted_once(flower_identity, caplog):
    strategy, messages = train_round([11, 12, 13])
    down = messages[2].metadata.dst_node_id
    replies = PollingGrid(FlowerLikeGrid(unreachable=[down]), interval=0.01).send_and_receive(
        messages, timeout=5)
    error = next(r for r in replies if r.has_error())
    assert error.metadata.src_node_id == down  # the SuperLink wrote it from SUPERLINK_NODE_ID
    assert error.metadata.reply_to_message_id == messages[2].metadata.message_id
    assert "Node Unavailable" in error.error.reason
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(arrays["w"].numpy(), np.ones((2, 2), np.float32))
    assert metrics["num_replies"] == 2 and metrics["num_failures"] == 1
    assert f"node {down} replied with an error" in caplog.text
    assert "no reply from" not in caplog.text


@pytest.mark.parametrize("silent_too", [False, True])
def test_check_dropouts_counts_a_superlink_error_reply_once(flower_identity, caplog, silent_too):
    """Replies straight from a Flower grid: the error reply still carries the SuperLink's id."""
    strategy, messages = train_round([11, 12, 13, 14])
    down, quiet = messages[3].metadata.dst_node_id, messages[2].metadata.dst_node_id
    grid = FlowerLikeGrid(unreachable=[down], silent=[quiet] if silent_too else [])
    grid.push_messages(messages)
    replies = grid.pull_messages(list(grid.sent))
    assert SUPERLINK_NODE_ID in {r.metadata.src_node_id for r in replies if r.has_error()}
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["num_failures"] == (2 if silent_too else 1)
    assert metrics["num_replies"] == (2 if silent_too else 3)
    assert "(the SuperLink reported 1 of them unreachable)" in caplog.text
