"""When Gossip-PGA averages globally, one mixing step, and what it would cost. Pure numpy.

Iteration k (0-based; Flower round k + 1), after every node's local step y_i::

    x_i = (1/n) sum_j y_j    if global(k)       # periodic: (k + 1) % H == 0
    x_i = sum_j W_ij y_j     otherwise

``global(k)`` is periodic (Gossip-PGA), never (Gossip SGD), or adaptive (Gossip-AGA). The
paper's adaptive rule was not recovered; ours starts at H_init and, at each global
average l, sets the next gap to ``H_l = ceil(H_init * sqrt(F_0 / F_l))`` where F is the
median of the training losses the nodes reported that iteration (F_0 at the first global
average): a robust statistic (a minority of nodes cannot move it past the honest losses),
and the ratio F_0 / F is bounded so that H never exceeds ``MAX_PERIOD_FACTOR`` x H_init
(one crafted loss once set H to 189,812,532, i.e. global averaging off).
The Flower strategy and the reference simulator both call these functions, so their
iterates agree to rounding.
"""

from __future__ import annotations

import math

import numpy as np

from strategies.aggregators import one_blas_thread
from strategies.topology import degree, global_average, gossip, is_global_round

MODES = ("periodic", "adaptive", "never")
MAX_PERIOD_FACTOR = 16  # adaptive: H <= 16 H_init, i.e. sqrt(F_0 / F) is capped at 16


def loss_statistic(losses) -> float:
    """What the adaptive schedule reads from the nodes' reported losses: their median."""
    return float(np.median(np.asarray(losses, dtype=np.float64)))


class AveragingSchedule:
    """Decides, iteration by iteration, whether the step is a global average."""

    def __init__(self, mode: str, period: int):
        if mode not in MODES:
            raise ValueError(f"averaging must be one of {MODES}, got {mode!r}.")
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"The averaging period H must be an integer >= 1, got {period!r}.")
        self.mode, self.initial_period, self.period = mode, period, period
        self.next_global = period - 1  # adaptive: the iteration of the next global average
        self.first_loss: float | None = None

    def is_global(self, iteration: int, loss: float) -> bool:
        """Whether iteration ``iteration`` ends in a global average; ``loss`` is the
        ``loss_statistic`` of the nodes' reported losses (used by ``adaptive`` only)."""
        if self.mode == "never":
            return False
        if self.mode == "periodic":
            return is_global_round(iteration, self.period)
        if iteration != self.next_global:
            return False
        if math.isfinite(loss) and loss > 0:
            if self.first_loss is None:
                self.first_loss = loss
            ratio = min(math.sqrt(self.first_loss / loss), MAX_PERIOD_FACTOR)
            self.period = max(1, math.ceil(self.initial_period * ratio))
        self.next_global = iteration + self.period
        return True


def mix_step(Y: np.ndarray, W: np.ndarray, is_global: bool, aggregator=None) -> np.ndarray:
    """The node models after one iteration, from the stacked local results ``Y`` (n, d).
    The math runs in float64; the result has Y's dtype (what is sent to the nodes).
    ``aggregator`` (``strategies.aggregators``) replaces the global mean by a robust one:
    every node gets ``robust_average(Y)``; None or ``mean`` is the exact 11^T/n step."""
    Y64 = np.asarray(Y, dtype=np.float64)
    if not is_global:
        with one_blas_thread():
            X = gossip(W, Y64)
    elif aggregator is None or aggregator.name == "mean":
        X = global_average(Y64)
    else:
        X = np.tile(robust_average(Y64, aggregator), (Y64.shape[0], 1))
    return X.astype(Y.dtype, copy=False)


def robust_average(Y: np.ndarray, aggregator) -> np.ndarray:
    """A robust mean of the node models (rows of Y, float64): the aggregator combines the
    rows' offsets from their coordinate-wise median (a robust reference point, so that
    rules that are not translation-equivariant, like BGMD, see updates), with weight 1 each."""
    reference = np.median(Y, axis=0)
    return reference + aggregator(Y - reference, np.ones(Y.shape[0])).vector


def modelled_cost(W: np.ndarray, is_global: bool, model_bytes: int) -> tuple[float, int]:
    """Bytes each node would send in a real decentralized deployment of this iteration,
    and the latency in sequential hops (a model, not a measurement):
    gossip = degree x model bytes over 1 hop; a global average as a ring all-reduce =
    2(n-1)/n x model bytes over 2(n-1) hops."""
    n = W.shape[0]
    if is_global:
        return 2 * (n - 1) / n * model_bytes, 2 * (n - 1)
    return float(degree(W) * model_bytes), 1 if degree(W) else 0


def without_nodes(W: np.ndarray, active: list[int]) -> np.ndarray:
    """W rebuilt on the graph left when only the ``active`` nodes remain: the induced
    subgraph of W's edges (either direction), Metropolis-Hastings weights. Doubly
    stochastic by construction; rows/columns follow the order of ``active``."""
    from strategies.topology import metropolis_hastings

    A = np.asarray(W) != 0
    A = (A | A.T)[np.ix_(active, active)]
    np.fill_diagonal(A, False)
    return metropolis_hastings(A)
