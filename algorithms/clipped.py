"""Clipped FedAvg (CELGC) and its naive parallel-clipping baseline.

Liu, Zhuang, Lei, Liao, "A Communication-Efficient Distributed Gradient Clipping Algorithm
for Training Deep Neural Networks", NeurIPS 2022. On client i, every local step::

    x_i <- x_i - min(eta, gamma / ||g_i||) (g_i + wd x_i)     (momentum on the direction)

and every I = ``train.local_steps`` steps (one round) the server averages the models. The
step is an option of the one training loop (``RoundSettings.clip_gamma``); the server half
is FedAvg's. gamma follows the learning-rate schedule (gamma_r = gamma eta_r / eta). It is
not Flower's DP clipping, which clips whole updates.

The naive baseline communicates every step: each client returns the gradient of one
mini-batch at the global model x, and the server takes the clipped step on their
aggregate (the mean, or a robust ``strategy.aggregator``)::

    g = A(g_1, ..., g_N) ;  x <- x - min(eta, gamma / ||g||) (g + wd x)

(large-batch clipped SGD, with momentum kept on the server), with the same step function
as the clients (``client.train.sgd_step``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from algorithms import register
from algorithms.base import Algorithm, ClientUpdate
from client.train import LocalResult, clipped_step, global_norm, minibatch_gradient
from results import metrics as M
from strategies.replies import flat, unflat


@register
class ClippedFedAvg(Algorithm):
    name = "clipped_fedavg"

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.train.local_epochs > 0:
            raise ValueError("clipped_fedavg counts I in steps: set train.local_steps, not local_epochs.")

    @classmethod
    def adjust(cls, settings, cfg):
        return settings.with_(clip_gamma=cfg.strategy.clip_gamma * settings.lr_scale)


@register
class NaiveClipping(Algorithm):
    name = "naive_clipping"
    sends_gradients = True

    def __init__(self, cfg, num_nodes: int | None = None):
        super().__init__(cfg, num_nodes)
        self.buffers: list[torch.Tensor] = []  # the server's momentum

    @classmethod
    def adjust(cls, settings, cfg):
        return settings.with_(clip_gamma=cfg.strategy.clip_gamma * settings.lr_scale, gradient=True)

    @classmethod
    def client_update(cls, model, split, loss_fn, settings, *, seed, momentum=None) -> ClientUpdate:
        """One mini-batch gradient at the received model (the first batch the training
        loop would draw with ``seed``)."""
        start = time.perf_counter()
        grads, loss = minibatch_gradient(model, split, loss_fn, batch_size=settings.batch_size,
                                         seed=seed)
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        result = LocalResult(loss=loss, steps=0, examples=len(split),
                             seconds=time.perf_counter() - start, grad_norm=float(global_norm(grads)))
        return ClientUpdate(dict(zip(names, grads, strict=True)), result)

    def server_update(self, x, aggregate, settings, specs):
        """x <- x - min(eta, gamma / ||g||) (g + wd x), g = the aggregated gradient (with
        the server's momentum), in the model's dtype as the clients would take it; the
        momentum advances only with a model that is finite."""
        state = {k: torch.from_numpy(v) for k, v in unflat(x, specs).items()}
        grads = {k: torch.from_numpy(v) for k, v in unflat(aggregate, specs).items()}
        params = [state[name] for name in grads]
        buffers = [b.clone() for b in self.buffers]
        norm = clipped_step(params, list(grads.values()), buffers, settings.lr, settings.clip_gamma,
                            settings.momentum, settings.weight_decay)
        new = flat({k: v.numpy() for k, v in state.items()})
        if np.isfinite(new).all():
            self.buffers[:] = buffers
        return new, {M.CLIP_FRACTION: float(settings.clip_gamma / max(norm, 1e-12) < settings.lr),
                     M.MEAN_GRAD_NORM: norm}

    def state_dict(self) -> dict:
        return {"buffers": [b.clone() for b in self.buffers]}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = [b.clone() for b in state["buffers"]]
