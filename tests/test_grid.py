"""server.grid.PollingGrid: Flower's send_and_receive semantics with its own poll interval."""

from __future__ import annotations

import time
from types import SimpleNamespace

from server.grid import DEPLOYMENT_POLL, SIMULATION_POLL, PollingGrid


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
                out.append(SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}")))
        return out

    def get_node_ids(self):
        return [7, 8]


def test_collects_every_reply_polling_at_its_own_interval():
    grid = PollingGrid(ScriptedGrid([1, 3, 5]), interval=0.01)
    start = time.monotonic()
    replies = grid.send_and_receive(["a", "b", "c"], timeout=10)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert grid.pulls == 5  # stops as soon as the last reply is in
    assert time.monotonic() - start < 1.0  # Flower's deployment grid would sleep 3 s per poll


def test_timeout_returns_the_replies_so_far():
    grid = PollingGrid(ScriptedGrid([1, 10**9]), interval=0.01)
    start = time.monotonic()
    replies = grid.send_and_receive(["a", "b"], timeout=0.1)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.1 <= time.monotonic() - start < 1.0


def test_passes_everything_else_through_and_picks_the_interval_by_grid_kind():
    inner = ScriptedGrid([1])
    assert PollingGrid(inner).get_node_ids() == [7, 8]
    assert PollingGrid(inner).interval == DEPLOYMENT_POLL
    inner.pull_interval = 0.1  # what Flower's InMemoryGrid (simulation) has
    assert PollingGrid(inner).interval == SIMULATION_POLL
