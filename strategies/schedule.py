"""When Gossip-PGA averages globally, one mixing step, and what it would cost. Pure numpy.

Iteration k (0-based; Flower round k + 1), after every node's local step y_i::

    x_i = (1/n) sum_j y_j    if global(k)       # periodic: (k + 1) % H == 0
    x_i = sum_j W_ij y_j     otherwise

``global(k)`` is periodic (Gossip-PGA), never (Gossip SGD), or adaptive (Gossip-AGA). The
paper's adaptive rule was not recovered; ours starts at H_init and, at each global
average l, sets the next gap to ``H_l = ceil(H_init * sqrt(F_0 / F_l))`` where F is the
mean training loss the nodes reported that iteration (F_0 at the first global average).
The Flower strategy and the reference simulator both call these functions, so their
iterates agree to rounding.
"""

from __future__ import annotations

import math

import numpy as np

from strategies.topology import degree, global_average, gossip, is_global_round

MODES = ("periodic", "adaptive", "never")


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
        """Whether iteration ``iteration`` ends in a global average; ``loss`` is the mean
        training loss the nodes reported for it (used by ``adaptive`` only)."""
        if self.mode == "never":
            return False
        if self.mode == "periodic":
            return is_global_round(iteration, self.period)
        if iteration != self.next_global:
            return False
        if math.isfinite(loss) and loss > 0:
            if self.first_loss is None:
                self.first_loss = loss
            self.period = math.ceil(self.initial_period * math.sqrt(self.first_loss / loss))
        self.next_global = iteration + self.period
        return True


def mix_step(Y: np.ndarray, W: np.ndarray, is_global: bool) -> np.ndarray:
    """The node models after one iteration, from the stacked local results ``Y`` (n, d).
    The math runs in float64; the result has Y's dtype (what is sent to the nodes)."""
    Y64 = np.asarray(Y, dtype=np.float64)
    X = global_average(Y64) if is_global else gossip(W, Y64)
    return X.astype(Y.dtype, copy=False)


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
