"""Clipped FedAvg (CELGC) and its naive parallel-clipping baseline.

Liu, Zhuang, Lei, Liao, "A Communication-Efficient Distributed Gradient Clipping Algorithm
for Training Deep Neural Networks", NeurIPS 2022. On client i, every local step::

    x_i <- x_i - min(eta, gamma / ||g_i||) (g_i + wd x_i)     (momentum on the direction)

and every I steps (one round) the server averages the models uniformly. The step itself
is an option of the one training loop (``client.train.local_train(clip_gamma=...)``); this
strategy only sends eta, gamma and I each round. It is not Flower's DP clipping, which
clips whole updates.

The naive baseline communicates every step: each client returns the gradient of one
mini-batch at the global model x, and the server takes the clipped step on the average::

    g = (1/N) sum_i g_i ;  x <- x - min(eta, gamma / ||g||) (g + wd x)

(large-batch clipped SGD, with momentum kept on the server), using the same step function
as the clients (``client.train.sgd_step``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from client import protocol as P
from client.train import global_norm, sgd_step
from strategies.fedavg import FedAvg


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
    """Every round: clients send one mini-batch gradient; the server clips the average."""

    def __init__(self, run_config: ConfigRecord, *, lr: float, clip_gamma: float,
                 momentum: float = 0.0, weight_decay: float = 0.0, **kwargs) -> None:
        if clip_gamma <= 0 or lr <= 0:
            raise ValueError("naive_clipping needs lr > 0 and clip_gamma > 0.")
        super().__init__(run_config, **kwargs)
        self.lr, self.clip_gamma = lr, clip_gamma
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buffers: list[torch.Tensor] = []  # server-side momentum
        self.current: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[P.MODE] = P.MODE_GRADIENT
        self.current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Flower's FedAvg averages the replies' arrays: here those are the gradients.
        mean_grad, metrics = super().aggregate_train(server_round, replies)
        if mean_grad is None or self.current is None:
            return None, metrics
        state = self.current.to_torch_state_dict()
        grads = mean_grad.to_torch_state_dict()
        params = [state[name] for name in grads]
        g = [grads[name] for name in grads]
        norm = global_norm(g)
        step = torch.minimum(self.clip_gamma / norm.clamp_min(1e-12), torch.tensor(self.lr))
        sgd_step(params, g, self.buffers, step, self.momentum, self.weight_decay)
        metrics[P.CLIP_FRACTION] = float(self.clip_gamma / max(float(norm), 1e-12) < self.lr)
        metrics["mean-grad-norm"] = float(norm)
        self.round_metrics[server_round] = dict(metrics)
        return ArrayRecord(state), metrics
