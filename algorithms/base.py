"""What an algorithm is: a client half and a server half (pfl-research's
``FederatedAlgorithm`` split), both plain PyTorch / NumPy, no flwr.

- **Client half** ``client_update``: given the model a client received, its data, the
  loss and this round's ``RoundSettings``, run the one training loop
  (``client.train.local_train``) and say what the client sends back.
- **Server half** ``server_update``: given the global model x (flat float64) and the
  aggregate A of the replies (``strategies.aggregators``; of x_k - x, or of the replies
  themselves when ``sends_gradients``), the new global model. FedAvg's is x + A.

``server_step`` is the round on the server that both drivers run (the Flower strategy
``strategies.fedavg.FedAvg`` and ``engine``): aggregate, server half, and the check that
the new model is finite in the model's dtype (otherwise it is not taken).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from algorithms.settings import RoundSettings
from client import protocol as P
from client.train import LocalResult, local_train
from results import metrics as M
from strategies.replies import ArraySpec, unflat


@dataclass
class ClientUpdate:
    """What the client half produced: the arrays it sends (by name) and the loop's result."""

    arrays: dict[str, torch.Tensor]
    result: LocalResult


@dataclass
class ServerStep:
    """One round on the server: the new global model by array name in the model's dtypes
    (None: not finite, the previous model stays) and the round's metrics."""

    arrays: dict[str, np.ndarray] | None
    metrics: dict[str, float] = field(default_factory=dict)


def reply_metrics(result: LocalResult, settings: RoundSettings) -> dict[str, float]:
    """The metrics a client's reply carries (``client.protocol``) from its training loop's
    result; the ClientApp adds its process's age and CUDA use."""
    metrics = {P.NUM_EXAMPLES: result.examples, P.TRAIN_LOSS: result.loss,
               P.NUM_STEPS: result.steps, P.TRAIN_SECONDS: result.seconds,
               P.GRAD_NORM: result.grad_norm, P.CLIP_FRACTION: result.clipped_fraction}
    if settings.smoothness_every > 0 and not settings.gradient:
        pairs = result.smoothness or [(0.0, 0.0)]
        metrics[P.SMOOTHNESS] = sum(s for _, s in pairs) / len(pairs)
        metrics[P.SMOOTHNESS_GRAD_NORM] = sum(g for g, _ in pairs) / len(pairs)
    if settings.drift_every > 0 and not settings.gradient:
        metrics[P.GRADIENT_DRIFT] = metrics[P.GRADIENT_DRIFT_MAX] = result.drift
    return metrics


class Algorithm:
    """FedAvg's halves; every other algorithm overrides what differs."""

    name: ClassVar[str]
    decentralized: ClassVar[bool] = False  # one model per node, mixed (Gossip-PGA's driver)
    sends_gradients: ClassVar[bool] = False  # replies are combined as they are, not as x_k - x

    def __init__(self, cfg, num_nodes: int | None = None):
        self.check(cfg)
        self.cfg, self.num_nodes = cfg, num_nodes

    @classmethod
    def check(cls, cfg) -> None:
        """Refuse a config this algorithm cannot run (ValueError naming the key)."""

    @classmethod
    def adjust(cls, settings: RoundSettings, cfg) -> RoundSettings:
        """This algorithm's part of a round's settings (``round_settings``)."""
        return settings

    # ------------------------------------------------------------------ client half
    @classmethod
    def client_update(cls, model: torch.nn.Module, split, loss_fn, settings: RoundSettings, *,
                      seed: int, momentum: list[torch.Tensor] | None = None) -> ClientUpdate:
        """Train ``model`` in place from the received model; send the trained model."""
        result = local_train(model, split, loss_fn, settings,
                             momentum_buffers=momentum if settings.persist_momentum else None,
                             seed=seed)
        return ClientUpdate(dict(model.state_dict()), result)

    # ------------------------------------------------------------------ server half
    def server_update(self, x: np.ndarray, aggregate: np.ndarray, settings: RoundSettings,
                      specs: list[ArraySpec]) -> tuple[np.ndarray, dict[str, float]]:
        """The new global model (flat float64) and metrics: x + A."""
        return x + aggregate, {}

    def state_dict(self) -> dict:
        """Server-half state a checkpoint keeps (plain Python, numpy, tensors)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def sampled_clients(cfg, num_clients: int, rounds: int) -> list[list[int]]:
    """The clients trained in each round: all of them, or Flower's rule
    ``max(int(n * fraction_train), min_train_nodes)`` drawn at random (seeded by run.seed)."""
    s = cfg.strategy
    if s.fraction_train >= 1.0:
        return [list(range(num_clients))] * rounds
    size = min(num_clients, max(int(num_clients * s.fraction_train), s.min_train_nodes))
    rng = random.Random(cfg.run.seed)
    return [sorted(rng.sample(range(num_clients), size)) for _ in range(rounds)]


def required_replies(min_replies: float, sent: int) -> int:
    """``strategy.min_replies`` as a count: below 1 it is a fraction of the nodes sent
    work (rounded up, at least 1), from 1 on a number of replies."""
    if min_replies < 1:
        return max(1, math.ceil(min_replies * sent - 1e-9))
    return int(min_replies)


def server_step(algorithm: Algorithm, aggregator, x: np.ndarray, rows: np.ndarray,
                weights: np.ndarray, keys, settings: RoundSettings,
                specs: list[ArraySpec]) -> ServerStep:
    """Combine the sound replies (the rows of ``rows``, flat float64, with ``weights``;
    ``keys`` name them for stateful rules) and take the algorithm's server step from x.
    ``rows`` is consumed: the updates x_k - x are formed in its place (no second copy of
    what may be a thousand models)."""
    updates = rows if algorithm.sends_gradients else np.subtract(rows, x, out=rows)
    started = time.perf_counter()
    result = aggregator(updates, weights, keys=keys)
    metrics = {key: float(value) for key, value in result.info.items()}
    metrics[M.AGGREGATION_SECONDS] = time.perf_counter() - started
    new, info = algorithm.server_update(x, result.vector, settings, specs)
    metrics.update(info)
    arrays = unflat(new, specs)
    if not all(np.isfinite(v).all() for v in arrays.values()):
        arrays = None
    metrics[M.AGGREGATE_REJECTED] = int(arrays is None)
    return ServerStep(arrays, metrics)
