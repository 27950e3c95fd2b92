"""Gossip-PGA (Chen, Yuan et al., "Accelerating Gossip SGD with Periodic Global Averaging",
ICML 2021). Every node i keeps its own model x_i. Iteration k (0-based; round k + 1)::

    y_i = x_i - eta g_i(x_i)                         # the one training loop, local_steps = 1
    x_i = (1/n) sum_j y_j   if global(k)             # periodic: (k + 1) % H == 0
    x_i = sum_j W_ij y_j    otherwise                # W doubly stochastic (strategies.topology)

``global(k)`` is ``strategies.schedule.AveragingSchedule`` (periodic, adaptive, never); the
global average may be a robust one (``strategy.aggregator``). Local SGD (W = I) and
parallel SGD (H = 1) are configurations of it. The client half is FedAvg's; the server
half is ``mix``: one mixing step over the stacked node models, used by the Flower driver
(``strategies.gossip``) and the engine alike. When nodes drop out (the driver's
``failure_policy='renormalize'``), W is rebuilt on the remaining graph with
Metropolis-Hastings weights.
"""

from __future__ import annotations

import numpy as np

from algorithms import register
from algorithms.base import Algorithm
from results import metrics as M
from strategies.schedule import AveragingSchedule, loss_statistic, mix_step, modelled_cost, without_nodes
from strategies.topology import beta, build_topology, check_mixing_matrix, consensus_distance


@register
class GossipPGA(Algorithm):
    name = "gossip_pga"
    decentralized = True

    def __init__(self, cfg, num_nodes: int | None = None, mixing=None):
        """``mixing``: ``step -> W`` instead of ``strategy.topology`` (a graph of your own)."""
        super().__init__(cfg, num_nodes)
        if num_nodes is None:
            raise ValueError("gossip_pga needs the number of nodes to build its graph.")
        s = cfg.strategy
        self.mixing = mixing or build_topology(s.topology, num_nodes, seed=cfg.run.seed,
                                               p=s.edge_probability)
        for step in range(4):  # time-varying graphs: check the first few matrices
            W = self.mixing(step)
            if W.shape != (num_nodes, num_nodes):
                raise ValueError(f"W has shape {W.shape}, expected ({num_nodes}, {num_nodes}).")
            check_mixing_matrix(W)
        self.schedule = AveragingSchedule(s.averaging, s.period)

    def mix(self, Y: np.ndarray, losses: list[float], iteration: int, active: list[int],
            aggregator=None) -> tuple[np.ndarray, dict[str, float]]:
        """The active nodes' models after iteration ``iteration`` from their local results
        (the rows of Y, in the order of ``active``) and their reported losses."""
        W = self.mixing(iteration)
        if len(active) < self.num_nodes:
            W = without_nodes(W, active)
        is_global = self.schedule.is_global(iteration, loss_statistic(losses))
        X = mix_step(Y, W, is_global, aggregator)
        modelled_bytes, hops = modelled_cost(W, is_global, int(Y.shape[1] * Y.itemsize))
        return X, {
            M.TRAIN_LOSS: float(np.mean(losses)),
            M.TRAIN_LOSS_MEDIAN: loss_statistic(losses),
            M.CONSENSUS_DISTANCE: consensus_distance(X),
            M.CONSENSUS_DISTANCE_BEFORE_MIXING: consensus_distance(Y),
            M.GLOBAL_AVERAGE: int(is_global),
            M.PERIOD: self.schedule.period,
            M.BETA: beta(W),
            M.MODELLED_BYTES_PER_NODE: modelled_bytes,
            M.MODELLED_HOPS: hops,
        }

    def state_dict(self) -> dict:
        return {"schedule": dict(vars(self.schedule))}

    def load_state_dict(self, state: dict) -> None:
        vars(self.schedule).update(state["schedule"])
