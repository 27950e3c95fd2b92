"""Teacher-student regression: inputs labelled by a random ReLU network, squared loss.

The setting of Deng, Kamani, Mahdavi (AISTATS 2022), after Du et al. / Allen-Zhu et al.:
inputs on the unit sphere (||x|| = 1), targets from a fixed random teacher
``f*(x) = v^T relu(W_L ... relu(W_1 x))`` with He-initialised weights, scaled to unit
variance, plus optional Gaussian label noise. A student ReLU MLP of chosen width and
depth is then fitted with Local SGD. Registered here as task ``teacher``.
"""

from __future__ import annotations

import numpy as np
import torch

from tasks.base import REGRESSION, Split, TaskData
from tasks.models import parameter_count
from tasks.registry import Task, register

NUM_BINS = 10  # non-IID splits bin the targets into deciles and split by bin


def teacher_targets(x: torch.Tensor, width: int, depth: int, generator: torch.Generator):
    h = x
    for _ in range(depth):
        w = torch.randn(h.shape[1], width, generator=generator) * (2.0 / h.shape[1]) ** 0.5
        h = torch.relu(h @ w)
    v = torch.randn(width, 1, generator=generator) / width**0.5
    return h @ v


def load_teacher(
    num_samples: int,
    input_dim: int,
    teacher_width: int,
    teacher_depth: int,
    label_noise: float,
    test_fraction: float,
    seed: int,
) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, input_dim, generator=gen)
    x = x / x.norm(dim=1, keepdim=True)
    y = teacher_targets(x, teacher_width, teacher_depth, gen)
    y = (y - y.mean()) / y.std().clamp_min(1e-12)
    if label_noise > 0:
        y = y + label_noise * torch.randn(y.shape, generator=gen)
    n_test = max(1, round(test_fraction * num_samples))
    order = torch.randperm(num_samples, generator=gen)
    test, train = order[:n_test], order[n_test:]
    targets = y[train, 0].numpy()
    edges = np.quantile(targets, np.linspace(0, 1, NUM_BINS + 1)[1:-1])
    return TaskData(
        train=Split(x[train], y[train]),
        test=Split(x[test], y[test]),
        kind=REGRESSION,
        num_outputs=1,
        input_shape=(input_dim,),
        labels=np.searchsorted(edges, targets).astype(np.int64),
    )


def _teacher_network(cfg) -> list[tuple[str, int, list[str]]]:
    """The teacher is a ReLU MLP too: the config's size check counts it."""
    d = cfg.data
    count = parameter_count("mlp", (d.input_dim,), 1, d.teacher_width, d.teacher_depth, 0)
    return [("The teacher network", count,
             ["data.teacher_width", "data.teacher_depth", "data.input_dim"])]


register(Task(
    name="teacher", kind=REGRESSION, num_outputs=1,
    input_shape=lambda data: (data.input_dim,),
    load=lambda key: load_teacher(key.num_samples, key.input_dim, key.teacher_width,
                                  key.teacher_depth, key.label_noise, key.test_fraction, key.seed),
    default_model="mlp", models=("mlp",),
    size_keys=("data.input_dim",), other_networks=_teacher_network,
))
