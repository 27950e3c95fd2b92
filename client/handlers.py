"""What the ClientApp does with a message: receive the model, run the one local training
loop, reply. ``client.app`` calls these in its own process or in the node's warm worker
(``client.worker``); either way the same functions give the same replies.

Read the message and node config, call plain functions from ``tasks`` and
``client.train``, wrap the result in records. Data, model and parsed config stay resident
in the process between messages (an LRU cache keyed by every config value that shapes
them); momentum that must persist lives in ``context.state``.

Where a node's data comes from (its node config):

- ``data-path=<file>``: a real device's own data (``tasks.local_data``: ``.npz`` or, for
  shakespeare, ``.txt``), trained and evaluated on; the central data set is never loaded
  (the model and loss come from ``tasks.task_spec``). ``partition-id`` is optional; when
  given it seeds the node's mini-batch order and is its Gossip-PGA graph index, otherwise
  the seed comes from the Flower node id. Gossip-PGA needs a distinct ``partition-id`` in
  0..n-1 on every node: a node without one answers its first gossip message with an error.
- otherwise ``partition-id`` and ``num-partitions``: client ``partition-id``'s slice of
  the central data set (simulation sets both itself).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

import algorithms
import tasks
from algorithms.base import reply_metrics
from algorithms.settings import round_settings
from client import protocol as P
from client.attacks import KINDS, attacked, is_attacker
from client.runtime import process_age
from client.train import round_seed
from conf import from_flat
from tasks.local_data import load_local
from tasks.partition import check_partition_id


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
            "This SuperNode's node config has neither data-path (the device's own data file) "
            "nor partition-id/num-partitions (a slice of the central data set); start it with "
            "--node-config \"data-path='/path/to/data.npz'\" or with "
            "--node-config 'partition-id=0 num-partitions=2' (simulation sets them itself)."
        )
    return int(node[P.PARTITION_ID]), int(node[P.NUM_PARTITIONS])


def node_partition_id(context: Context) -> int | None:
    """The node's partition-id: required without data-path, optional with it (None)."""
    node = context.node_config
    if P.DATA_PATH not in node:
        return partition_of(context)[0]
    if P.PARTITION_ID not in node:
        return None
    partition_id = int(node[P.PARTITION_ID])
    if P.NUM_PARTITIONS in node:
        check_partition_id(partition_id, int(node[P.NUM_PARTITIONS]))
    return partition_id


def node_split(cfg, spec: tasks.TaskSpec, context: Context) -> tasks.Split:
    """The node's data: its own file (data-path) or its slice of the central data set."""
    node = context.node_config
    if P.DATA_PATH in node:
        return load_local(str(node[P.DATA_PATH]), spec)
    return tasks.client_split(cfg, *partition_of(context), disk_cache=True)


@lru_cache(maxsize=4)
def _resident_model(key: tuple, device: str) -> torch.nn.Module:
    cfg = _config(key)
    return tasks.make_model(cfg, tasks.task_spec(cfg)).to(device)


def _setup(msg: Message, context: Context, with_split: bool = True):
    cfg, key = received_config(msg)
    partition_id = node_partition_id(context)
    spec = tasks.task_spec(cfg)
    split = node_split(cfg, spec, context) if with_split else None
    device = tasks.pick_device(cfg.train.device)
    model = _resident_model(key, str(device))
    if P.ARRAYS in msg.content.array_records:  # a Gossip-PGA cohort sends one model per client
        model.load_state_dict(msg.content[P.ARRAYS].to_torch_state_dict())
    return cfg, spec, split, model, partition_id


def query(msg: Message, context: Context) -> Message:
    """A resumed Gossip-PGA run asks each node which graph index (partition-id) it holds."""
    partition_id = node_partition_id(context)
    if partition_id is None:
        raise ValueError("Gossip-PGA places every node on its graph by partition-id, and this "
                         "SuperNode has none; give every SuperNode a distinct partition-id.")
    return Message(RecordDict({P.METRICS: MetricRecord({P.INDEX: partition_id})}), reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """The algorithm's client half (``algorithms``) with this round's settings: for this
    node's own client, or for each logical client of its cohort the server named."""
    config = msg.content[P.CONFIG]
    if P.CLIENTS in config:
        return _train_cohort(msg, context, [int(c) for c in config[P.CLIENTS]])
    cfg, spec, split, model, partition_id = _setup(msg, context)
    want_index = config.get(P.WANT_PARTITION_ID, False)
    if want_index and partition_id is None:
        raise ValueError(
            "Gossip-PGA places every node on its graph by partition-id, and this SuperNode "
            f"(data-path={context.node_config[P.DATA_PATH]!r}) has none. Give every SuperNode "
            "a distinct partition-id in 0..n-1 next to its data-path, e.g. --node-config "
            "\"data-path='/data/mine.npz' partition-id=0\"."
        )
    # batch order: one stream per (run, node, round); a device without partition-id is
    # told apart by its Flower node id
    node = partition_id if partition_id is not None else int(context.node_id)
    arrays, metrics = _client_round(cfg, spec, model, split, node, int(config[P.SERVER_ROUND]),
                                    context, P.STATE_MOMENTUM, attack_kind(cfg, context, partition_id))
    if want_index:
        metrics[P.INDEX] = partition_id
    content = RecordDict({P.ARRAYS: arrays, P.METRICS: metrics})
    fault = context.node_config.get(P.FAULT)
    if fault is not None and str(fault) not in KINDS:
        content = broken_reply(content, str(fault))
    return Message(content=content, reply_to=msg)


def _train_cohort(msg: Message, context: Context, clients: list[int]) -> Message:
    """A cohort (``data.num_clients`` > 0): train the named logical clients one after the
    other, each from the received model on its own slice ``client_split(cfg, c,
    num_clients)`` with its own seed and momentum, exactly as a SuperNode of its own
    would; reply each client's arrays and metrics as records of their own."""
    cfg, spec, _, model, partition_id = _setup(msg, context, with_split=False)
    n = cfg.data.num_clients
    hosts = int(context.node_config.get(P.NUM_PARTITIONS, 0))
    if n < 1 or partition_id is None or hosts < 1 or any(c % hosts != partition_id or not 0 <= c < n
                                                         for c in clients):
        raise ValueError(f"This SuperNode (partition-id={partition_id} of num-partitions={hosts}) "
                         f"was sent clients {clients} of data.num_clients={n}; it hosts the clients "
                         "c with c % num-partitions == partition-id.")
    config = msg.content[P.CONFIG]
    server_round = int(config[P.SERVER_ROUND])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    content = RecordDict()
    folder = context.node_config.get(P.DATA_PATH)
    for client in clients:
        own = P.cohort_keys(client)[0]
        if own in msg.content.array_records:  # Gossip-PGA: this client's own model
            model.load_state_dict(msg.content[own].to_torch_state_dict())
        else:
            model.load_state_dict(start)
        split = cohort_split(cfg, spec, client, n, folder)
        arrays, metrics = _client_round(cfg, spec, model, split, client, server_round, context,
                                        f"{P.STATE_MOMENTUM}/{client}",
                                        attack_kind(cfg, context, client, num_partitions=n))
        if config.get(P.WANT_PARTITION_ID, False):
            metrics[P.INDEX] = client
        arrays_key, metrics_key = P.cohort_keys(client)
        content[arrays_key], content[metrics_key] = arrays, metrics
    return Message(content=content, reply_to=msg)


def cohort_split(cfg, spec: tasks.TaskSpec, client: int, num_clients: int, folder) -> tasks.Split:
    """Logical client ``client``'s data: its own file ``client-<c>.npz`` (``.txt`` for a
    language task) in the folder the node's ``data-path`` names (a silo hosting several
    data owners), or its slice of the central data set."""
    if folder is None:
        return tasks.client_split(cfg, client, num_clients, disk_cache=True)
    from pathlib import Path

    from tasks.local_data import suffix_for

    root = Path(str(folder)).expanduser()
    if not root.is_dir():
        raise ValueError(f"data-path={str(folder)!r}: with data.num_clients > 0 a SuperNode's "
                         "data-path names a folder holding one file per logical client it hosts "
                         f"(client-<c>{suffix_for(spec)}), not a file.")
    return load_local(root / f"client-{client}{suffix_for(spec)}", spec)


def _client_round(cfg, spec, model, split, client: int, server_round: int, context: Context,
                  momentum_key: str, kind: str | None) -> tuple[ArrayRecord, MetricRecord]:
    """One client's round from the model loaded in ``model``: the client half with this
    round's settings, its momentum kept under ``momentum_key`` in ``context.state``, and
    the simulated attack ``kind`` (or None) applied to what it sends."""
    settings = round_settings(cfg, server_round)
    seed = round_seed(cfg.run.seed, client, server_round)
    start = None if settings.gradient else {k: v.clone() for k, v in model.state_dict().items()}
    update = algorithms.get(cfg.strategy.name).client_update(
        model, split, tasks.make_loss(cfg, spec), settings, seed=seed,
        momentum=_saved_momentum(context, model, momentum_key) if settings.persist_momentum else None)
    if settings.persist_momentum and update.result.momentum:
        context.state[momentum_key] = ArrayRecord(
            {str(i): b for i, b in enumerate(update.result.momentum)})
    metrics = _metrics(update.result, settings)
    arrays = update.arrays
    if kind is not None:
        arrays = attacked(kind, start, arrays, scale=cfg.attack.scale, std=cfg.attack.std, seed=seed)
        if kind == "weight_inflation":
            metrics[P.NUM_EXAMPLES] = cfg.attack.claimed_examples
    return ArrayRecord(arrays), metrics


def _saved_momentum(context: Context, model: torch.nn.Module, key: str) -> list[torch.Tensor] | None:
    """The momentum buffers this node (or cohort client) kept from its previous round."""
    if key not in context.state.array_records:
        return None
    device = next(model.parameters()).device
    saved = context.state.array_records[key].to_torch_state_dict()
    return [saved[name].to(device) for name in sorted(saved, key=int)]


def attack_kind(cfg, context: Context, partition_id: int | None,
                num_partitions: int | None = None) -> str | None:
    """The attack this node (or cohort client ``partition_id`` of ``num_partitions``) makes,
    if any: its node config ``fault=<kind>`` (a rogue SuperNode in a deployment), else
    ``attack.kind`` when its partition-id is among the lowest ``attack.fraction``
    (simulation)."""
    fault = context.node_config.get(P.FAULT)
    if fault is not None and str(fault) in KINDS:
        return None if str(fault) == "none" else str(fault)
    if num_partitions is None:
        num_partitions = context.node_config.get(P.NUM_PARTITIONS)
    if is_attacker(cfg.attack, partition_id, int(num_partitions) if num_partitions else None):
        return cfg.attack.kind
    return None


# Replies that break the protocol rather than the model (node config fault=<name>), for
# testing the server's reply checks in a deployment.
PROTOCOL_FAULTS = ("shape", "complex_nan", "float64_huge", "extra_metric", "no_metrics")


def broken_reply(content: RecordDict, fault: str) -> RecordDict:
    """``shape`` adds a row to the first array; ``complex_nan`` sends the first array as
    complex64 NaN; ``float64_huge`` sends it as float64 1e300 (inf as float32);
    ``extra_metric`` adds a metric no other reply has; ``no_metrics`` drops every metric."""
    if fault not in PROTOCOL_FAULTS:
        raise ValueError(f"node config fault={fault!r}: use an attack kind ({', '.join(KINDS)}) "
                         f"or one of {', '.join(PROTOCOL_FAULTS)}.")
    arrays = {k: v.numpy() for k, v in content[P.ARRAYS].items()}
    metrics = MetricRecord(dict(content[P.METRICS]))
    first = next(iter(arrays))
    if fault == "shape":
        arrays[first] = np.concatenate([arrays[first], arrays[first][:1]])
    elif fault == "complex_nan":
        arrays[first] = np.full(arrays[first].shape, complex("nan+nanj"), np.complex64)
    elif fault == "float64_huge":
        arrays[first] = np.full(arrays[first].shape, 1e300, np.float64)
    elif fault == "extra_metric":
        metrics["rogue_metric"] = 1.0
    else:
        metrics = MetricRecord()
    record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return RecordDict({P.ARRAYS: record, P.METRICS: metrics})


def _metrics(result, settings) -> MetricRecord:
    """The reply's metrics: the client half's, and this process's age and CUDA use."""
    return MetricRecord({**reply_metrics(result, settings), P.PROCESS_SECONDS: process_age(),
                         P.CUDA: int(torch.cuda.is_initialized())})


def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation of the received model on this client's own data."""
    cfg, spec, split, model, _ = _setup(msg, context)
    metrics = tasks.evaluate(model, split, tasks.make_loss(cfg, spec), spec.kind, cfg.eval.batch_size)
    record = MetricRecord({
        P.NUM_EXAMPLES: len(split),
        P.EVAL_LOSS: metrics["loss"],
        P.EVAL_ACCURACY: metrics.get("accuracy", 0.0),
    })
    return Message(content=RecordDict({P.METRICS: record}), reply_to=msg)
