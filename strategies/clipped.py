"""Clipped FedAvg (CELGC) and its naive parallel-clipping baseline.

Liu, Zhuang, Lei, Liao, "A Communication-Efficient Distributed Gradient Clipping Algorithm
for Training Deep Neural Networks", NeurIPS 2022. On client i, every local step::

    x_i <- x_i - min(eta, gamma / ||g_i||) (g_i + wd x_i)     (momentum on the direction)

and every I steps (one round) the server averages the models uniformly. The step itself
is an option of the one training loop (``client.train.local_train(clip_gamma=...)``); this
strategy only sends eta, gamma and I each round. It is not Flower's DP clipping, which
clips whole updates.

The naive baseline communicates every step: each client returns the gradient of one
mini-batch at the global model x, and the server takes the clipped step on their
aggregate (the mean, or a robust ``strategy.aggregator``)::

    g = (1/N) sum_i g_i ;  x <- x - min(eta, gamma / ||g||) (g + wd x)

(large-batch clipped SGD, with momentum kept on the server), using the same step function
as the clients (``client.train.sgd_step``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from client import protocol as P
from client.train import clipped_step
from strategies.fedavg import FedAvg
from strategies.replies import flat, unflat


class ClippedFedAvg(FedAvg):
    """FedAvg whose clients clip every local step (CELGC)."""

    def __init__(self, run_config: ConfigRecord, *, lr: float, clip_gamma: float,
                 local_steps: int, **kwargs) -> None:
        if clip_gamma <= 0 or lr <= 0 or local_steps < 1:
            raise ValueError("clipped_fedavg needs lr > 0, clip_gamma > 0 and local_steps >= 1.")
        super().__init__(run_config, **kwargs)
        self.lr, self.clip_gamma, self.local_steps = lr, clip_gamma, local_steps

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[P.LR] = self.lr
        config[P.CLIP_GAMMA] = self.clip_gamma
        config[P.LOCAL_STEPS] = self.local_steps
        return super().configure_train(server_round, arrays, config, grid)


class NaiveClipping(FedAvg):
    """Every round: clients send one mini-batch gradient; the server clips the aggregate."""

    relative = False  # replies are gradients: aggregate them as they are

    def __init__(self, run_config: ConfigRecord, *, lr: float, clip_gamma: float,
                 momentum: float = 0.0, weight_decay: float = 0.0, **kwargs) -> None:
        if clip_gamma <= 0 or lr <= 0:
            raise ValueError("naive_clipping needs lr > 0 and clip_gamma > 0.")
        super().__init__(run_config, **kwargs)
        self.lr, self.clip_gamma = lr, clip_gamma
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buffers: list[torch.Tensor] = []  # server-side momentum

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[P.MODE] = P.MODE_GRADIENT
        return super().configure_train(server_round, arrays, config, grid)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "buffers": [b.clone() for b in self.buffers]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.buffers = [b.clone() for b in state["buffers"]]

    def apply(self, aggregate: np.ndarray, metrics: MetricRecord) -> np.ndarray | None:
        """x <- x - min(eta, gamma / ||g||) (g + wd x), g = the aggregated gradient (with
        the server's momentum), in the model's dtype as the clients would take it."""
        state = {k: torch.from_numpy(v) for k, v in unflat(self.x, self.specs).items()}
        grads = {k: torch.from_numpy(v) for k, v in unflat(aggregate, self.specs).items()}
        params = [state[name] for name in grads]
        g = [grads[name] for name in grads]
        buffers = [b.clone() for b in self.buffers]
        norm = clipped_step(params, g, buffers, self.lr, self.clip_gamma, self.momentum,
                            self.weight_decay)
        new = flat({k: v.numpy() for k, v in state.items()})
        if np.isfinite(new).all():  # momentum advances only with a model that is taken
            self.buffers[:] = buffers
        metrics[P.CLIP_FRACTION] = float(self.clip_gamma / max(norm, 1e-12) < self.lr)
        metrics["mean-grad-norm"] = norm
        return new
