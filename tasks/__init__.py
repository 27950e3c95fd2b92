"""The plain ML side of fedlocal: data, models, losses and evaluation. No flwr imports.

Every task is one record (``tasks.registry.Task``) registered under its name in its own
module; ``names()`` lists them and ``get_task(name)`` finds one. ``load_task(cfg)`` returns
the task's data (cached per process, keyed by every config value that shapes it: a
``DataKey``), ``client_split`` a client's partition of it, ``task_spec(cfg)`` the task's
kind, outputs and input shape from the config alone (no data loaded: what a device with
only its own data, ``tasks.local_data``, builds the model and loss from), ``make_model`` the
model, ``make_loss`` the loss and ``evaluate`` the metrics of a model on a split.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from tasks.base import CLASSIFICATION, LANGUAGE, REGRESSION, Split, TaskData, TaskSpec
from tasks.models import build_model
from tasks.partition import check_partition_id, partition_all
from tasks.registry import DataKey, PartitionKey, SplitKey, Task, get_task, names, register

__all__ = [
    "DataKey", "PartitionKey", "Split", "SplitKey", "Task", "TaskData", "TaskSpec",
    "client_split", "evaluate", "federation", "get_task", "load_task", "load_test_set",
    "make_loss", "make_model", "model_name", "names", "pick_device", "register", "task_spec",
]


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: CUDA when available, then Apple MPS, else CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but PyTorch sees no CUDA device; use auto or cpu.")
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def task_spec(cfg) -> TaskSpec:
    """The task's kind, number of outputs and input shape, from the config alone. Equal to
    what ``load_task(cfg)`` reports (tests hold them equal), without loading any data."""
    return get_task(cfg.task.name).spec(cfg)


@lru_cache(maxsize=4)
def _load(key: DataKey) -> TaskData:
    data = get_task(key.task).load(key)
    if key.max_train and key.max_train < len(data.train):
        keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(key.seed))
        keep = keep[:key.max_train].sort().values
        data = TaskData(
            data.train.subset(keep), data.test, data.kind, data.num_outputs, data.input_shape,
            data.labels[keep.numpy()], None if data.groups is None else data.groups[keep.numpy()],
        )
    return data


def load_task(cfg) -> TaskData:
    """The task's training pool and held-out test set (cached per process)."""
    return _load(DataKey.from_config(cfg))


def load_test_set(cfg) -> Split:
    """The held-out test set alone, not cached: the training pool it was loaded with is
    freed (the ServerApp's need; for Fashion-MNIST that is 188 MB of float32 images)."""
    return _load.__wrapped__(DataKey.from_config(cfg)).test


@lru_cache(maxsize=4)
def _partitions(key: DataKey, partition: PartitionKey, num_partitions: int) -> list:
    """Every client's indices, computed once per process (a worker serves many clients)."""
    data = _load(key)
    return partition_all(partition.scheme, num_partitions, data.labels, data.groups,
                         alpha=partition.alpha, classes_per_client=partition.classes_per_client,
                         min_partition_size=partition.min_partition_size, seed=partition.seed)


@lru_cache(maxsize=16)  # a simulation worker serves many clients; each split is a copy
def _client_split(key: DataKey, partition: PartitionKey, num_partitions: int, partition_id: int,
                  disk: bool) -> Split:
    check_partition_id(partition_id, num_partitions)

    def build() -> Split:
        return _load(key).train.subset(_partitions(key, partition, num_partitions)[partition_id])

    if not disk:
        return build()
    from tasks.cache import cached_split

    # the disk cache also keys on the files under data.path, so a changed data set rebuilds
    return cached_split(SplitKey(key, partition, num_partitions, partition_id), key.path, build)


def client_split(cfg, partition_id: int, num_partitions: int, disk_cache: bool = False) -> Split:
    """Client ``partition_id``'s share of the training pool (cached per process; with
    ``disk_cache`` also on disk, for processes that live for one message: ``tasks.cache``)."""
    return _client_split(DataKey.from_config(cfg), PartitionKey.from_config(cfg), num_partitions,
                         partition_id, disk_cache)


def federation(cfg, num_clients: int):
    """Everything a one-process simulation of ``num_clients`` needs: the task data, the
    loss, every client's split and a fresh model (as a ClientApp would build them)."""
    data = load_task(cfg)
    splits = [client_split(cfg, i, num_clients) for i in range(num_clients)]
    return data, make_loss(cfg, data), splits, make_model(cfg, data)


def model_name(cfg) -> str:
    """``model.name``, with ``auto`` resolved to the task's default model."""
    if cfg.model.name != "auto":
        return cfg.model.name
    return get_task(cfg.task.name).default_model


def make_model(cfg, data: TaskData | TaskSpec) -> torch.nn.Module:
    """A freshly initialised model for the task's shape (``data``: its data or its
    ``task_spec``); the same ``run.seed`` gives the same weights. The global RNG is left
    as it was."""
    m = cfg.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed)
        return build_model(model_name(cfg), data.input_shape, data.num_outputs, m.width,
                           m.depth, m.embed_dim, m.parametrization, m.freeze_output)


def make_loss(cfg, data: TaskData | TaskSpec):
    """``loss(output, target) -> scalar``: cross-entropy, or half the squared error per
    example (``0.5 * mean_i ||f(x_i) - y_i||^2``, one-hot targets for classifiers).
    ``data``: the task's data or its ``task_spec`` (only ``kind`` is read)."""
    squared = data.kind == REGRESSION or cfg.task.loss == "mse"
    if data.kind == LANGUAGE:
        return lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    if not squared:
        return F.cross_entropy
    if data.kind == CLASSIFICATION:
        def one_hot_mse(out, y):
            return 0.5 * (out - F.one_hot(y, out.shape[-1]).to(out.dtype)).pow(2).sum(1).mean()

        return one_hot_mse
    return lambda out, y: 0.5 * (out - y).pow(2).sum(1).mean()


@torch.no_grad()
def evaluate(model, split: Split, loss_fn, kind: str, batch_size: int = 1024) -> dict[str, float]:
    """Loss (mean over examples) plus accuracy (classification, language: per character)
    and perplexity (language) of ``model`` on ``split``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct, count, tokens = 0.0, 0, 0, 0
    for start in range(0, len(split), batch_size):
        x = split.x[start : start + batch_size].to(device)
        y = split.y[start : start + batch_size].to(device)
        out = model(x)
        total_loss += float(loss_fn(out, y)) * len(x)
        count += len(x)
        if kind != REGRESSION:
            correct += int((out.argmax(-1) == y).sum())
            tokens += y.numel()
    model.train(was_training)
    metrics = {"loss": total_loss / max(count, 1)}
    if kind != REGRESSION:
        metrics["accuracy"] = correct / max(tokens, 1)
    if kind == LANGUAGE:
        metrics["perplexity"] = float(torch.tensor(metrics["loss"]).exp())
    return metrics
