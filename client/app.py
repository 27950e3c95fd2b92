"""fedlocal ClientApp: receive the model, run the one local training loop, reply.

Flower-facing code only: read the message and node config, call plain functions from
``tasks`` and ``client.train``, wrap the result in records. Data, model and parsed
config stay resident in the process between rounds (an LRU cache keyed by every config
value that shapes them); momentum that must persist lives in ``context.state``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import tasks
from client import protocol as P
from client.train import local_train, round_seed, steps_for
from conf import from_flat

app = ClientApp()


@lru_cache(maxsize=8)
def _config(items: tuple):
    return from_flat(dict(items))


def received_config(msg: Message) -> tuple:
    """The run's resolved config as parsed by the server (see client.protocol), and its
    items as a hashable key for the caches."""
    if P.RUN_CONFIG not in msg.content.config_records:
        raise ValueError(
            f"The message has no '{P.RUN_CONFIG}' config record: the ServerApp is not "
            "fedlocal's, or an older version."
        )
    key = tuple(sorted(msg.content.config_records[P.RUN_CONFIG].items()))
    return _config(key), key


def partition_of(context: Context) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` from the node config."""
    node = context.node_config
    if P.PARTITION_ID not in node or P.NUM_PARTITIONS not in node:
        raise ValueError(
            "This SuperNode's node config lacks partition-id/num-partitions; start it with "
            "--node-config 'partition-id=0 num-partitions=2' (simulation sets them itself)."
        )
    return int(node[P.PARTITION_ID]), int(node[P.NUM_PARTITIONS])


@lru_cache(maxsize=4)
def _resident_model(key: tuple, device: str) -> torch.nn.Module:
    cfg = _config(key)
    return tasks.make_model(cfg, tasks.load_task(cfg)).to(device)


def _setup(msg: Message, context: Context):
    cfg, key = received_config(msg)
    partition_id, num_partitions = partition_of(context)
    data = tasks.load_task(cfg)
    split = tasks.client_split(cfg, partition_id, num_partitions)
    device = tasks.pick_device(cfg.train.device)
    model = _resident_model(key, str(device))
    model.load_state_dict(msg.content[P.ARRAYS].to_torch_state_dict())
    return cfg, data, split, model, partition_id


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, data, split, model, partition_id = _setup(msg, context)
    t = cfg.train
    server_round = int(msg.content[P.CONFIG][P.SERVER_ROUND])
    device = next(model.parameters()).device
    buffers = None
    if t.persist_optimizer_state and P.STATE_MOMENTUM in context.state.array_records:
        saved = context.state.array_records[P.STATE_MOMENTUM].to_torch_state_dict()
        buffers = [saved[name].to(device) for name in sorted(saved, key=int)]
    result = local_train(
        model,
        split,
        tasks.make_loss(cfg, data),
        steps=steps_for(len(split), t.batch_size, t.local_steps, t.local_epochs),
        batch_size=t.batch_size,
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        momentum_buffers=buffers,
        seed=round_seed(cfg.run.seed, partition_id, server_round),
    )
    if t.persist_optimizer_state and result.momentum:
        context.state[P.STATE_MOMENTUM] = ArrayRecord(
            {str(i): b for i, b in enumerate(result.momentum)}
        )
    metrics = MetricRecord({
        P.NUM_EXAMPLES: result.examples,
        P.TRAIN_LOSS: result.loss,
        P.NUM_STEPS: result.steps,
        P.TRAIN_SECONDS: result.seconds,
    })
    if msg.content[P.CONFIG].get(P.WANT_PARTITION_ID, False):
        metrics[P.PARTITION_ID] = partition_id
    content = RecordDict({P.ARRAYS: ArrayRecord(model.state_dict()), P.METRICS: metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation of the received model on this client's own data."""
    cfg, data, split, model, _ = _setup(msg, context)
    metrics = tasks.evaluate(model, split, tasks.make_loss(cfg, data), data.kind, cfg.eval.batch_size)
    record = MetricRecord({
        P.NUM_EXAMPLES: len(split),
        P.EVAL_LOSS: metrics["loss"],
        P.EVAL_ACCURACY: metrics.get("accuracy", 0.0),
    })
    return Message(content=RecordDict({P.METRICS: record}), reply_to=msg)
