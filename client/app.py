"""fedlocal ClientApp: receive the model, run the one local training loop, reply.

Flower-facing code only: read the message and node config, call plain functions from
``tasks`` and ``client.train``, wrap the result in records. Data, model and parsed
config stay resident in the process between rounds (an LRU cache keyed by every config
value that shapes them); momentum that must persist lives in ``context.state``.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import tasks
from client import protocol as P
from client.train import global_norm, local_train, minibatch_gradient, round_seed, steps_for
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
    """Local training (or, for the naive clipping baseline, one mini-batch gradient)."""
    cfg, data, split, model, partition_id = _setup(msg, context)
    t, config = cfg.train, msg.content[P.CONFIG]
    server_round = int(config[P.SERVER_ROUND])
    seed = round_seed(cfg.run.seed, partition_id, server_round)
    loss_fn = tasks.make_loss(cfg, data)
    if config.get(P.MODE, P.MODE_TRAIN) == P.MODE_GRADIENT:
        start = time.perf_counter()
        grads, loss = minibatch_gradient(model, split, loss_fn, batch_size=t.batch_size, seed=seed)
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        arrays = ArrayRecord(dict(zip(names, grads, strict=True)))
        metrics = _metrics(len(split), loss, 0, time.perf_counter() - start,
                           float(global_norm(grads)), 0.0)
    else:
        arrays, metrics = _train(cfg, msg, context, split, model, loss_fn, seed)
    if config.get(P.WANT_PARTITION_ID, False):
        metrics[P.PARTITION_ID] = partition_id
    return Message(content=RecordDict({P.ARRAYS: arrays, P.METRICS: metrics}), reply_to=msg)


def _metrics(examples, loss, steps, seconds, grad_norm, clipped) -> MetricRecord:
    return MetricRecord({
        P.NUM_EXAMPLES: examples, P.UNIT_WEIGHT: 1, P.TRAIN_LOSS: loss, P.NUM_STEPS: steps,
        P.TRAIN_SECONDS: seconds, P.GRAD_NORM: grad_norm, P.CLIP_FRACTION: clipped,
    })


def _train(cfg, msg, context, split, model, loss_fn, seed):
    t, config = cfg.train, msg.content[P.CONFIG]
    device = next(model.parameters()).device
    buffers = None
    if t.persist_optimizer_state and P.STATE_MOMENTUM in context.state.array_records:
        saved = context.state.array_records[P.STATE_MOMENTUM].to_torch_state_dict()
        buffers = [saved[name].to(device) for name in sorted(saved, key=int)]
    steps = int(config.get(P.LOCAL_STEPS, 0)) or steps_for(
        len(split), t.batch_size, t.local_steps, t.local_epochs)
    gamma = config.get(P.CLIP_GAMMA)
    result = local_train(
        model, split, loss_fn, steps=steps, batch_size=t.batch_size,
        lr=float(config.get(P.LR, t.lr)), momentum=t.momentum, weight_decay=t.weight_decay,
        clip_gamma=None if gamma is None else float(gamma), momentum_buffers=buffers, seed=seed,
        smoothness_every=t.smoothness_every, drift_every=t.drift_every,
    )
    if t.persist_optimizer_state and result.momentum:
        context.state[P.STATE_MOMENTUM] = ArrayRecord(
            {str(i): b for i, b in enumerate(result.momentum)}
        )
    metrics = _metrics(result.examples, result.loss, result.steps, result.seconds,
                       result.grad_norm, result.clipped_fraction)
    if t.smoothness_every > 0:
        pairs = result.smoothness or [(0.0, 0.0)]
        metrics[P.SMOOTHNESS] = sum(s for _, s in pairs) / len(pairs)
        metrics[P.SMOOTHNESS_GRAD_NORM] = sum(g for g, _ in pairs) / len(pairs)
    if t.drift_every > 0:
        metrics[P.GRADIENT_DRIFT] = metrics[P.GRADIENT_DRIFT_MAX] = result.drift
    return ArrayRecord(model.state_dict()), metrics


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
