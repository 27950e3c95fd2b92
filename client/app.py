"""fedlocal ClientApp: receive the model, run the one local training loop, reply.

The Flower-facing shell only: what a message does is ``client.handlers`` (the node's data,
the model, local training). It runs in this process, or, when the SuperNode's node config
has ``warm-worker=<seconds>``, in the node's warm worker (``client.worker``), a process
that keeps torch, the model and the data resident between messages, which Flower's
process-per-message deployment otherwise pays for again on every message. This module
imports only flwr, so a ClientApp process that hands its message on stays as cheap as a
ClientApp that does nothing.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client import protocol as P
from client import transport, worker
from client.runtime import process_age

app = ClientApp()
log = logging.getLogger("fedlocal.client")


def warm_worker_idle(context: Context) -> float:
    """Seconds a warm worker waits for the next message (node config ``warm-worker``);
    0 = no worker."""
    value = context.node_config.get(P.WARM_WORKER, 0)
    try:
        idle = float(value)
    except (TypeError, ValueError):
        idle = -1.0
    if idle < 0:
        raise ValueError(f"node config warm-worker={value!r}: give the seconds a warm worker waits "
                         "for the next message (e.g. warm-worker=120), or 0 for none.")
    return idle


def handle(kind: str, msg: Message, context: Context) -> Message:
    idle = warm_worker_idle(context)
    if idle > 0 and transport.supported():
        try:
            reply = worker.call(kind, msg, context, idle)
        except worker.WorkerUnavailable as e:
            log.warning("node %s: %s; running this message in the ClientApp's own process",
                        context.node_id, e)
        else:
            if P.PROCESS_SECONDS in reply.content.get(P.METRICS, {}):
                # the age of this ClientApp process, not of the worker
                reply.content[P.METRICS][P.PROCESS_SECONDS] = process_age()
            return reply
    from client import handlers

    return getattr(handlers, kind)(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training (or, for the naive clipping baseline, one mini-batch gradient)."""
    return handle("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation of the received model on this client's own data."""
    return handle("evaluate", msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """A resumed Gossip-PGA run: which graph index (partition-id) this node holds."""
    from client import handlers

    return handlers.query(msg, context)
