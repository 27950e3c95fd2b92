"""The Grid with a faster reply poll.

Flower 1.39's ``Grid.send_and_receive`` pushes the messages, then pulls the replies
every 3 s in a deployment (``HttpGrid``) and every 0.1 s in simulation
(``InMemoryGrid.pull_interval``), fixed. A round whose compute takes a fraction of that
waits up to a whole interval for nothing, in every message phase. ``PollingGrid`` wraps the
run's grid and does the same push/pull with its own interval; everything else passes
through to the wrapped grid, so strategies use it as they would Flower's.
``FEDLOCAL_GRID_POLL=<seconds>`` in the ServerApp's environment overrides the interval
(``3`` restores Flower's deployment behaviour, for before/after measurements).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from flwr.app import Message

DEPLOYMENT_POLL = 0.1  # one HTTP request to the SuperLink per poll
SIMULATION_POLL = 0.01  # in-process; see docs/benchmarks.md, recommendation 5


class PollingGrid:
    def __init__(self, grid, interval: float | None = None):
        self._grid = grid
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
        pending = set(self._grid.push_messages(messages))
        end = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        while pending:
            pulled = list(self._grid.pull_messages(pending))
            replies.extend(pulled)
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not pending or (timeout is not None and time.monotonic() >= end):
                break
            time.sleep(self.interval)
        return replies
