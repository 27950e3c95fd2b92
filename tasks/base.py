"""What every task hands to the rest of fedlocal: plain tensors, no flwr.

A task loader returns a ``TaskData``: the whole training pool (split over clients later by
``tasks.partition``), the server's held-out test set, and the column the partitioners
split by (class labels, binned regression targets, or speaking roles). A ``TaskSpec`` is
what the model and the loss need of a task (kind, outputs, input shape); it follows from
the config alone, so a device with only its own data can build both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CLASSIFICATION, REGRESSION, LANGUAGE = "classification", "regression", "language"


@dataclass
class Split:
    """Inputs and targets as tensors; row i of ``x`` goes with row i of ``y``."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}.")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index) -> Split:
        index = torch.as_tensor(index, dtype=torch.long)
        return Split(self.x[index], self.y[index])

    def to(self, device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class TaskSpec:
    """A task's shape, known without its data: ``make_model`` and ``make_loss`` accept it
    wherever they accept a ``TaskData`` (same attribute names)."""

    name: str  # task.name
    kind: str  # CLASSIFICATION | REGRESSION | LANGUAGE
    num_outputs: int  # classes, regression outputs, or vocabulary size
    input_shape: tuple[int, ...]  # shape of one input (without the batch dimension)


@dataclass
class TaskData:
    """A task's data. ``labels[i]`` is what partitioners split training example i by;
    ``groups[i]`` is its natural owner (a speaking role) where the task has one."""

    train: Split
    test: Split
    kind: str  # CLASSIFICATION | REGRESSION | LANGUAGE
    num_outputs: int  # classes, regression outputs, or vocabulary size
    input_shape: tuple[int, ...]  # shape of one input (without the batch dimension)
    labels: np.ndarray
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.train):
            raise ValueError("labels must have one entry per training example.")
        if self.groups is not None and len(self.groups) != len(self.train):
            raise ValueError("groups must have one entry per training example.")
