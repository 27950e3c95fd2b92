"""The task registry: one ``Task`` record per task, registered under its name in its own
module (``tasks/vision.py``: digits and fmnist, ``tasks/teacher.py``,
``tasks/shakespeare.py``, ``tasks/cifar10.py``). No flwr imports.

Everything fedlocal does by task name goes through the record: loading the data
(``tasks.load_task``), the model and loss's view of the task (``tasks.task_spec``), what
``model.name = 'auto'`` builds, a device's own 8-bit image file (``tasks.local_data``), the
config's consistency checks (``Task.check``, called by ``conf.load``) and its model-size
check (``size_keys``, ``other_networks``). Adding a task is one module that calls
``register(Task(...))``, plus its test; ``names()`` finds it by importing every module of
the ``tasks`` package except the support modules in ``_INTERNAL``.

The data cache keys are named (``DataKey``, ``PartitionKey``, ``SplitKey``): frozen
dataclasses whose ``repr`` is the disk cache's key text (``tasks.cache``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tasks.base import CLASSIFICATION, LANGUAGE, REGRESSION, TaskData, TaskSpec

# Modules of the tasks package that register no task (everything else is imported by
# ``names()``/``get_task``, so a new task module needs no entry anywhere).
_INTERNAL = frozenset({"base", "cache", "diagnostics", "local_data", "models", "partition",
                       "registry"})

# task.loss values that fit each kind (make_loss builds the loss from the kind).
LOSSES = {
    CLASSIFICATION: ("auto", "cross_entropy", "mse"),
    REGRESSION: ("auto", "mse"),
    LANGUAGE: ("auto", "cross_entropy"),
}
LABEL_SCHEMES = ("iid", "dirichlet", "classes")  # partitions by label (or target bin)


@dataclass(frozen=True)
class DataKey:
    """Every config value that shapes a task's data (``data.*`` as named in the config,
    plus ``task.name`` and ``run.seed``): the in-process and on-disk caches' key, and the
    argument of ``Task.load``. A value a task does not read is in the key all the same."""

    task: str
    path: str
    download: bool
    test_fraction: float
    max_train: int
    num_samples: int
    input_dim: int
    teacher_width: int
    teacher_depth: int
    label_noise: float
    seq_len: int
    seed: int

    @classmethod
    def from_config(cls, cfg) -> DataKey:
        d = cfg.data
        return cls(cfg.task.name, d.path, d.download, d.test_fraction, d.max_train,
                   d.num_samples, d.input_dim, d.teacher_width, d.teacher_depth,
                   d.label_noise, d.seq_len, cfg.run.seed)


@dataclass(frozen=True)
class PartitionKey:
    """How the training pool is split over clients (``data.partition`` and its options)."""

    scheme: str
    alpha: float
    classes_per_client: int
    min_partition_size: int
    seed: int

    @classmethod
    def from_config(cls, cfg) -> PartitionKey:
        d = cfg.data
        return cls(d.partition, d.alpha, d.classes_per_client, d.min_partition_size,
                   cfg.run.seed)


@dataclass(frozen=True)
class SplitKey:
    """One client's split: the disk cache's key (``tasks.cache.cached_split``)."""

    data: DataKey
    partition: PartitionKey
    num_partitions: int
    partition_id: int


@dataclass(frozen=True)
class Task:
    """What fedlocal knows of one task.

    ``input_shape`` maps the config's ``data`` section to the shape of one input (without
    the batch dimension): the model is built from it, and from ``num_outputs``, without
    loading any data. ``load`` reads or makes the data (``TaskData``) for a ``DataKey``.
    """

    name: str  # task.name
    kind: str  # CLASSIFICATION | REGRESSION | LANGUAGE
    num_outputs: int  # classes, regression outputs, or vocabulary size
    input_shape: Callable[[Any], tuple[int, ...]]  # cfg.data -> shape of one input
    load: Callable[[DataKey], TaskData]
    default_model: str  # what model.name = 'auto' builds
    models: tuple[str, ...]  # the model.name values that fit, the default first
    partitions: tuple[str, ...] = LABEL_SCHEMES  # the data.partition values that fit
    groups: str = ""  # what a natural group is ('speaking role'), for data.partition = natural
    # what the task makes of 8-bit images (N, C, H, W) from a device's file (tasks.local_data);
    # the same function as the task's own loader, so both see identical inputs. None: not images.
    images_from_uint8: Callable[[np.ndarray], torch.Tensor] | None = None
    size_keys: tuple[str, ...] = ()  # data.* keys that change the model's size
    # networks the task builds itself besides the model (teacher's), for the config's size
    # check: cfg -> [(what, parameter count, the keys that size it)]
    other_networks: Callable[[Any], list[tuple[str, int, list[str]]]] | None = None

    def spec(self, cfg) -> TaskSpec:
        """The task's kind, outputs and input shape for this config (no data loaded)."""
        return TaskSpec(self.name, self.kind, self.num_outputs, tuple(self.input_shape(cfg.data)))

    def check(self, cfg) -> None:
        """The config's task-dependent rules: ``data.partition``, ``model.name`` and
        ``task.loss`` must fit this task. ValueError saying what fits otherwise (the
        config funnel reports it as a ConfigError)."""
        scheme, model, loss = cfg.data.partition, cfg.model.name, cfg.task.loss
        if scheme not in self.partitions:
            use = _either([f"natural (by {self.groups})" if p == "natural" else p
                           for p in self.partitions])
            hosts = [t for t in map(get_task, names()) if scheme in t.partitions]
            if scheme == "natural" and hosts:
                what = f" (split by {hosts[0].groups})" if len(hosts) == 1 else ""
                raise ValueError(
                    f"data.partition = 'natural'{what} needs task.name = "
                    f"{_either([repr(t.name) for t in hosts])}, not {self.name!r}; use {use}.")
            raise ValueError(f"data.partition = {scheme!r} is not defined for {self.name!r}; "
                             f"use {use}.")
        if model != "auto" and model not in self.models:
            fits = [name for name in names() if model in get_task(name).models]
            if len(fits) == 1:
                raise ValueError(f"model.name = {model!r} is for task {fits[0]!r} only; use "
                                 f"{_either(self.models)}.")
            raise ValueError(f"model.name = {model!r} does not fit task {self.name!r}; use "
                             f"{_either(self.models)}.")
        if loss not in LOSSES[self.kind]:
            raise ValueError(f"task.loss = {loss!r} does not fit the {self.kind} task "
                             f"{self.name!r}; use {_either(LOSSES[self.kind])}.")


def _either(options) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    options = list(options)
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


_REGISTRY: dict[str, Task] = {}
_discovered = False


def register(task: Task) -> Task:
    """Make ``task`` the one registered as ``task.name`` (each task module calls it once)."""
    if task.default_model not in task.models:
        raise ValueError(f"Task {task.name!r}: default_model {task.default_model!r} is not "
                         f"among its models {task.models}.")
    if task.name in _REGISTRY and _REGISTRY[task.name] is not task:
        raise ValueError(f"Two tasks are registered as {task.name!r}.")
    _REGISTRY[task.name] = task
    return task


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import tasks

    for module in pkgutil.iter_modules(tasks.__path__):
        if module.name not in _INTERNAL and not module.name.startswith("_"):
            importlib.import_module(f"tasks.{module.name}")
    _discovered = True


def names() -> list[str]:
    """Every registered task's name, sorted (``task.name``'s allowed values)."""
    _discover()
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """The task registered as ``name``; ValueError naming the choices otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"Unknown task.name {name!r}; choose one of {', '.join(names())}.")
    return _REGISTRY[name]
