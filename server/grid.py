"""The Grid with a faster reply poll.

Flower 1.39's ``Grid.send_and_receive`` pushes the messages, then pulls the replies
every 3 s in a deployment (``HttpGrid``) and every 0.1 s in simulation
(``InMemoryGrid.pull_interval``), fixed. A round whose compute takes a fraction of that
waits up to a whole interval for nothing, in every message phase. ``PollingGrid`` wraps the
run's grid and does the same push/pull with its own interval; everything else passes
through to the wrapped grid, so strategies use it as they would Flower's.
``FEDLOCAL_GRID_POLL=<seconds>`` in the ServerApp's environment overrides the interval
(``3`` restores Flower's deployment behaviour, for before/after measurements).

While replies are outstanding it logs, every ``log_every`` s (10), how many are in and which
nodes it waits for, so a round that waits for a slow or vanished node is not silent.

It also hands each reply back as coming from the node its message went to: an error reply
that the SuperLink writes for a node it cannot reach (stopped, deregistered) carries the
SuperLink's node id (Flower's ``SUPERLINK_NODE_ID``), and names the node only through
``reply_to_message_id``. Keyed by ``src_node_id`` as strategies key replies, that node would
look silent and the error would look like another node's, counted twice.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable
from logging import INFO

from flwr.app import Message
from flwr.common.logger import log

DEPLOYMENT_POLL = 0.1  # one HTTP request to the SuperLink per poll
SIMULATION_POLL = 0.01  # in-process; see docs/benchmarks.md, recommendation 5
LOG_EVERY = 10.0  # seconds between "waiting for node(s) ..." lines


class PollingGrid:
    def __init__(self, grid, interval: float | None = None, log_every: float = LOG_EVERY):
        self._grid = grid
        self.log_every = log_every
        if interval is None and os.environ.get("FEDLOCAL_GRID_POLL"):
            interval = float(os.environ["FEDLOCAL_GRID_POLL"])
        if interval is None:
            interval = SIMULATION_POLL if hasattr(grid, "pull_interval") else DEPLOYMENT_POLL
        self.interval = interval

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        """Push ``messages``, then pull replies every ``interval`` s until every message
        has one or ``timeout`` s have passed (Flower's semantics: ``None`` waits forever)."""
        messages = list(messages)
        ids = self._grid.push_messages(messages)
        # message id -> the node it went to (Flower keeps the order; None: not pushed)
        sent = {mid: m.metadata.dst_node_id for m, mid in zip(messages, ids, strict=False) if mid}
        pending = set(sent)
        start = time.monotonic()
        end, next_log = start + (timeout or 0.0), start + self.log_every
        replies: list[Message] = []
        while pending:
            pulled = list(self._grid.pull_messages(pending))
            replies.extend(attributed(reply, sent) for reply in pulled)
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            now = time.monotonic()
            if not pending or (timeout is not None and now >= end):
                break
            if now >= next_log:
                self._log_wait(messages, sent, pending, now - start,
                               None if timeout is None else end - now)
                next_log = now + self.log_every
            time.sleep(self.interval)
        return replies

    @staticmethod
    def _log_wait(messages, sent: dict, pending: set, waited: float, left: float | None) -> None:
        kinds = sorted({str(m.metadata.message_type) for m in messages})
        log(INFO, "Waiting for %s replies: %d of %d in after %.0f s; still waiting for node(s) "
            "%s (%s).", "/".join(kinds), len(sent) - len(pending), len(sent), waited,
            ", ".join(str(node) for mid, node in sent.items() if mid in pending),
            "no timeout" if left is None else f"giving up in {left:.0f} s")


def attributed(reply: Message, sent: dict[str, int]) -> Message:
    """``reply`` as coming from the node its message was sent to (``sent``: message id ->
    node id): an error reply the SuperLink wrote for that node gets the node's id."""
    node = sent.get(reply.metadata.reply_to_message_id)
    if node is None or reply.metadata.src_node_id == node or not reply.has_error():
        return reply
    metadata = copy.copy(reply.metadata)
    metadata.__dict__["_src_node_id"] = node  # Metadata has no setter for it
    return Message(reply.error, metadata=metadata)
