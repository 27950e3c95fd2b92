"""Mixing matrices for gossip averaging, and the pure math of one Gossip-PGA step.

Gossip-PGA (Chen, Yuan, Zhang, Pan, Xu, Yin, "Accelerating Gossip SGD with Periodic Global
Averaging", ICML 2021, arXiv 2105.09080), adapt-then-combine form, n nodes, period H::

    y_i^(k)   = x_i^(k) - gamma * grad F_i(x_i^(k); xi_i^(k+1))     # local step
    x_i^(k+1) = (1/n) sum_j y_j^(k)      if (k + 1) % H == 0        # global average
              = sum_j W_ij y_j^(k)       otherwise                  # one gossip step

Stacking the node models as the rows of X (shape (n, d)), a gossip step is X <- W @ X and a
global average is X <- (11^T/n) @ X. W = I gives Local SGD with period H, H = infinity gives
Gossip SGD, H = 1 gives parallel SGD.

Convention: row i of W holds the weights node i applies to the models it receives, so
W_ij != 0 means "j sends to i". Every W here is doubly stochastic (rows and columns sum to 1,
entries >= 0): row sums keep each node's update an average, column sums keep the mean
x_bar = (1/n) 1^T X unchanged by a gossip step. How fast gossip mixes is
beta = ||W - 11^T/n||_2 < 1 on a connected graph; the paper's rule of thumb is that periodic
global averaging helps when H < 1/(1 - beta).

The graphs follow BlueFog's ``bluefog/common/topology_util.py`` (the same group's library):
bi-directional ring with weights 1/3, 2-D mesh grid with Metropolis-Hastings weights
(Xiao & Boyd's rule, BlueFog cites arXiv 1702.05122), ``ExponentialTwoGraph`` (called
``PowerTwoRingGraph`` in older BlueFog) and its one-peer time-varying version, star, fully
connected. Torus and Erdos-Renyi are MH-weighted additions.

Everything is plain numpy float64; no flwr, no torch. Matrices returned by ``build_topology``
are read-only so one cached W cannot be changed by a caller.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import numpy as np

# name -> (n, seed, p) -> step -> W; each graph registers itself below its function
_REGISTRY: dict[str, Callable[..., Callable[[int], np.ndarray]]] = {}


def register_topology(name: str, make_w: Callable[..., np.ndarray]) -> None:
    """Register a static graph: ``make_w(n, seed=..., p=...)`` returns its W (checked when
    built). Time-varying graphs register a ``step -> W`` builder in ``_REGISTRY``."""
    _REGISTRY[name] = lambda n, seed, p: _static(make_w(n, seed=seed, p=p))


def names() -> list[str]:
    """Every registered topology (the config's allowed ``strategy.topology`` values)."""
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_count(value, what: str) -> int:
    """Return ``value`` as an int if it is an integer >= 1, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}.")
    return int(value)


def _ceil_log2(n: int) -> int:
    """ceil(log2 n) for an integer n >= 1, exact (no floating point)."""
    return (n - 1).bit_length()


def check_mixing_matrix(W: np.ndarray, atol: float = 1e-9) -> None:
    """Raise ValueError unless W is a finite, non-negative, doubly stochastic square matrix.

    Entries may be negative by at most ``atol`` (rounding); each row and column sum must be
    within ``atol`` of 1. The message names the first offending row/column and its sum.
    """
    W = np.asarray(W)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise ValueError(f"Mixing matrix must be square (n, n) with n >= 1, got shape {W.shape}.")
    if not np.issubdtype(W.dtype, np.number) or np.iscomplexobj(W):
        raise ValueError(f"Mixing matrix must hold real numbers, got dtype {W.dtype}.")
    W = W.astype(np.float64)
    bad = ~np.isfinite(W)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"Mixing matrix has {int(bad.sum())} non-finite entries (NaN or inf), "
            f"first at W[{i}, {j}] = {W[i, j]}."
        )
    if (W < -atol).any():
        i, j = np.unravel_index(np.argmin(W), W.shape)
        raise ValueError(
            f"Mixing matrix has negative entries, the smallest is W[{i}, {j}] = {W[i, j]:.6g}."
        )
    for axis, kind in ((1, "row"), (0, "column")):
        sums = W.sum(axis=axis)
        off = np.abs(sums - 1.0) > atol
        if off.any():
            k = int(np.argmax(off))
            raise ValueError(
                f"Mixing matrix is not doubly stochastic: {kind} {k} sums to {sums[k]:.12g} "
                f"(expected 1 within atol={atol:g}; {int(off.sum())} {kind}s are off)."
            )


def is_connected(adjacency: np.ndarray) -> bool:
    """True if the undirected graph with this (n, n) adjacency is connected (breadth-first)."""
    A = np.asarray(adjacency) != 0
    n = A.shape[0]
    seen = np.zeros(n, dtype=bool)
    seen[0] = True
    queue = deque([0])
    while queue:
        i = queue.popleft()
        for j in np.flatnonzero(A[i] & ~seen):
            seen[j] = True
            queue.append(j)
    return bool(seen.all())


# --------------------------------------------------------------------------------------------
# Weights from a graph
# --------------------------------------------------------------------------------------------


def metropolis_hastings(adjacency: np.ndarray) -> np.ndarray:
    """Metropolis-Hastings mixing matrix of an undirected graph.

        W_ij = 1 / (1 + max(deg_i, deg_j))   for every edge {i, j}
        W_ii = 1 - sum_{j != i} W_ij
        W_ij = 0                             otherwise

    ``adjacency`` is a symmetric 0/1 (or boolean) (n, n) matrix without self loops; deg_i is the
    number of neighbours of i. W is symmetric and doubly stochastic for any such graph, and
    W_ii >= 1/(1 + deg_i) > 0. It has beta < 1 only if the graph is connected (see
    ``is_connected``); a disconnected graph is accepted, since each component still mixes
    within itself.
    """
    A = np.asarray(adjacency)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise ValueError(f"Adjacency must be square (n, n) with n >= 1, got shape {A.shape}.")
    if not np.isin(A, (0, 1)).all():
        raise ValueError("Adjacency entries must be 0 or 1 (or booleans).")
    A = A.astype(bool)
    if (A != A.T).any():
        i, j = np.argwhere(A != A.T)[0]
        raise ValueError(
            f"Adjacency must be symmetric (undirected graph): A[{i}, {j}] != A[{j}, {i}]."
        )
    if A.diagonal().any():
        i = int(np.flatnonzero(A.diagonal())[0])
        raise ValueError(f"Adjacency must have no self loops: A[{i}, {i}] = 1.")
    deg = A.sum(axis=1)
    W = np.where(A, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    return W


# --------------------------------------------------------------------------------------------
# Static topologies
# --------------------------------------------------------------------------------------------


def _circulant(offsets: dict[int, float], n: int) -> np.ndarray:
    """W_{i, (i + o) mod n} = weight for every (o, weight): node i receives from i + o."""
    W = np.zeros((n, n))
    rows = np.arange(n)
    for offset, weight in offsets.items():
        W[rows, (rows + offset) % n] += weight
    return W


def ring(n: int) -> np.ndarray:
    """Bi-directional ring: x_i <- (x_{i-1} + x_i + x_{i+1}) / 3.

    n = 1 gives [[1]] and n = 2 gives all 1/2 (the two neighbours coincide). Symmetric;
    beta = 1/3 + 2/3 cos(2 pi / n) for n >= 3 (0.805 at n = 8, 0.949 at n = 16).
    """
    n = _check_count(n, "ring: n")
    if n <= 2:
        return np.full((n, n), 1.0 / n)
    return _circulant({-1: 1.0 / 3, 0: 1.0 / 3, 1: 1.0 / 3}, n)


register_topology("ring", lambda n, **_: ring(n))


def grid(rows: int, cols: int) -> np.ndarray:
    """2-D mesh grid without wrap-around, Metropolis-Hastings weights (BlueFog MeshGrid2DGraph).

    Node r * cols + c is linked to its right (r, c + 1) and lower (r + 1, c) neighbour; corner
    nodes have degree 2, edge nodes 3, inner nodes 4. A 1 x n grid is a path.
    """
    rows = _check_count(rows, "grid: rows")
    cols = _check_count(cols, "grid: cols")
    n = rows * cols
    A = np.zeros((n, n), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if c + 1 < cols:
                A[i, i + 1] = A[i + 1, i] = True
            if r + 1 < rows:
                A[i, i + cols] = A[i + cols, i] = True
    return metropolis_hastings(A)


register_topology("grid", lambda n, **_: grid(*grid_shape(n)))


def torus(rows: int, cols: int) -> np.ndarray:
    """2-D torus (grid with wrap-around in both directions), Metropolis-Hastings weights.

    Neighbours of (r, c) are the set {(r +- 1 mod rows, c), (r, c +- 1 mod cols)} minus the node
    itself, so on small sizes coinciding neighbours count once: a side of length 2 gives one
    neighbour along it, a side of length 1 none (1 x n is a ring with weights 1/3).
    """
    rows = _check_count(rows, "torus: rows")
    cols = _check_count(cols, "torus: cols")
    n = rows * cols
    A = np.zeros((n, n), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            neighbours = {
                ((r + 1) % rows) * cols + c,
                ((r - 1) % rows) * cols + c,
                r * cols + (c + 1) % cols,
                r * cols + (c - 1) % cols,
            } - {i}
            for j in neighbours:
                A[i, j] = A[j, i] = True
    return metropolis_hastings(A)


register_topology("torus", lambda n, **_: torus(*grid_shape(n)))


def exponential(n: int) -> np.ndarray:
    """Static exponential graph (BlueFog ExponentialTwoGraph); directed, not symmetric.

    Node i sends to (i + 2^k) mod n for k = 0 .. tau - 1, tau = ceil(log2 n), so

        x_i <- (x_i + sum_k x_{(i - 2^k) mod n}) / (1 + tau).

    W is circulant: every row and every column holds 1 + tau equal weights, so it is doubly
    stochastic. Duplicates: since 2^k <= 2^(tau-1) < n, the offsets 2^k are distinct residues
    in [1, n-1] and never hit the node itself, for any n (n = 3: offsets 1 and 2; n = 2: offset
    1, W = all 1/2; n = 1: no offset, W = [[1]]). The offsets are still collected in a set and
    the weight is 1 / (1 + number of distinct offsets), so a coinciding offset could not break
    the row sums. For n a power of 2, 1 - beta = 2 / (1 + log2 n) (beta = 0.6 at n = 16).
    """
    n = _check_count(n, "exponential: n")
    offsets = {(-(2**k)) % n for k in range(_ceil_log2(n))} - {0}
    weight = 1.0 / (1 + len(offsets))
    return _circulant({0: weight, **dict.fromkeys(offsets, weight)}, n)


register_topology("exponential", lambda n, **_: exponential(n))


def fully_connected(n: int) -> np.ndarray:
    """Complete graph: x_i <- (1/n) sum_j x_j, i.e. W = 11^T/n (one step = global average)."""
    n = _check_count(n, "fully_connected: n")
    return np.full((n, n), 1.0 / n)


register_topology("fully_connected", lambda n, **_: fully_connected(n))
register_topology("identity", lambda n, **_: np.eye(n))  # no communication: Local SGD


def star(n: int) -> np.ndarray:
    """Star with hub 0, Metropolis-Hastings weights (equal to BlueFog's StarGraph).

    Hub-leaf weight 1/n, leaf self weight 1 - 1/n, hub self weight 1/n.
    """
    n = _check_count(n, "star: n")
    A = np.zeros((n, n), dtype=bool)
    A[0, 1:] = A[1:, 0] = True
    return metropolis_hastings(A)


register_topology("star", lambda n, **_: star(n))


def erdos_renyi(n: int, p: float, seed: int) -> np.ndarray:
    """Random graph G(n, p), resampled until connected, Metropolis-Hastings weights.

    Each of the n(n-1)/2 possible edges is present with probability p, drawn from
    ``np.random.default_rng(seed)``: the same (n, p, seed) gives the same W. Raises
    ValueError when 100 draws in a row are disconnected.
    """
    n = _check_count(n, "erdos_renyi: n")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"erdos_renyi: p must be in [0, 1], got {p}.")
    rng = np.random.default_rng(seed)
    tries = 100
    for _ in range(tries):
        A = np.triu(rng.random((n, n)) < p, k=1)
        A = A | A.T
        if is_connected(A):
            return metropolis_hastings(A)
    raise ValueError(
        f"erdos_renyi: no connected G(n={n}, p={p}) graph in {tries} draws with seed {seed}; "
        f"raise p (connectivity needs roughly p > ln(n)/n = {math.log(n) / n:.3f})."
    )


register_topology("erdos_renyi", lambda n, seed, p: erdos_renyi(n, p, seed))


# --------------------------------------------------------------------------------------------
# Time-varying topology
# --------------------------------------------------------------------------------------------


def one_peer_exponential(n: int, step: int) -> np.ndarray:
    """One-peer (dynamic) exponential graph at iteration ``step`` (BlueFog, NeurIPS'21 paper).

    With tau = ceil(log2 n) and s = step mod tau, node i sends to (i + 2^s) mod n, so

        x_i <- (x_i + x_{(i - 2^s) mod n}) / 2.

    Each W is circulant with two weights 1/2 per row and column (doubly stochastic, not
    symmetric for n > 2), and is a subgraph of ``exponential(n)``. For n = 2^tau the product of
    tau consecutive matrices is exactly 11^T/n: prod_s (I + P^(2^s)) / 2 = (1/n) sum_m P^m.
    n = 1 gives [[1]]. (W and its transpose, "i receives from i + 2^s", share all of these
    properties; this module follows BlueFog's send-to-(i + 2^s) direction.)
    """
    n = _check_count(n, "one_peer_exponential: n")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"one_peer_exponential: step must be an integer >= 0, got {step!r}.")
    tau = _ceil_log2(n)
    if tau == 0:
        return np.ones((1, 1))
    shift = 2 ** (int(step) % tau)
    return _circulant({0: 0.5, -shift: 0.5}, n)


def _one_peer_schedule(n: int, seed: int, p: float) -> Callable[[int], np.ndarray]:
    schedule = [_frozen(one_peer_exponential(n, s)) for s in range(max(1, _ceil_log2(n)))]
    return lambda step: schedule[step % len(schedule)]


_REGISTRY["one_peer_exponential"] = _one_peer_schedule


# --------------------------------------------------------------------------------------------
# Quantities and one step of the algorithm
# --------------------------------------------------------------------------------------------


def beta(W: np.ndarray) -> float:
    """Mixing rate beta = ||W - 11^T/n||_2 (largest singular value); 0 for W = 11^T/n."""
    W = np.asarray(W, dtype=np.float64)
    n = W.shape[0]
    return float(np.linalg.norm(W - np.full((n, n), 1.0 / n), ord=2))


def degree(W: np.ndarray) -> int:
    """Max over rows of the number of non-zero off-diagonal entries (exact zeros only).

    With the row convention this is the largest number of models a node receives per gossip
    step; every topology here except ``star`` (hub: n - 1) is regular, where it also equals
    the number each node sends.
    """
    W = np.asarray(W)
    off_diagonal = (W != 0) & ~np.eye(W.shape[0], dtype=bool)
    return int(off_diagonal.sum(axis=1).max())


def is_global_round(t: int, period: int) -> bool:
    """True when iteration t (0-based) ends with a global average: (t + 1) % period == 0."""
    if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 1:
        raise ValueError(f"Global averaging period must be an integer >= 1, got {period!r}.")
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
        raise ValueError(f"Iteration t must be an integer >= 0, got {t!r}.")
    return (int(t) + 1) % int(period) == 0


def _as_models(X: np.ndarray, n: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim not in (1, 2) or X.shape[0] == 0:
        raise ValueError(f"Models must be stacked as an (n, d) array, got shape {X.shape}.")
    if n is not None and X.shape[0] != n:
        raise ValueError(f"W mixes {n} nodes but X holds {X.shape[0]} models (rows).")
    return X


def gossip(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    """One gossip step X <- W @ X; row i of X is node i's model (shape (n, d))."""
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"Mixing matrix must be square (n, n), got shape {W.shape}.")
    return W @ _as_models(X, W.shape[0])


def global_average(X: np.ndarray) -> np.ndarray:
    """Global average x_i <- (1/n) sum_j x_j for every i; returns an array shaped like X."""
    X = _as_models(X)
    return np.broadcast_to(X.mean(axis=0), X.shape).copy()


def consensus_distance(X: np.ndarray) -> float:
    """Consensus distance (1/n) sum_i ||x_i - x_bar||^2 of the stacked models X (n, d)."""
    X = _as_models(X)
    return float(np.mean(np.sum((X - X.mean(axis=0)) ** 2, axis=tuple(range(1, X.ndim)))))


# --------------------------------------------------------------------------------------------
# By name
# --------------------------------------------------------------------------------------------


def grid_shape(n: int) -> tuple[int, int]:
    """Most square factorization rows x cols = n with rows <= cols (a prime n gives 1 x n)."""
    n = _check_count(n, "grid_shape: n")
    rows = math.isqrt(n)
    while n % rows:
        rows -= 1
    return rows, n // rows


def _frozen(W: np.ndarray) -> np.ndarray:
    check_mixing_matrix(W)
    W.setflags(write=False)
    return W


def _static(W: np.ndarray) -> Callable[[int], np.ndarray]:
    W = _frozen(W)
    return lambda step: W


def build_topology(
    name: str, n: int, *, seed: int = 0, p: float = 0.3
) -> Callable[[int], np.ndarray]:
    """Return ``step -> W`` for the named topology on n nodes, validated once, here.

    Static graphs return the same read-only W at every step; ``one_peer_exponential`` cycles
    through its tau = ceil(log2 n) matrices. ``identity`` (W = I, no communication) turns
    Gossip-PGA into Local SGD. ``grid``/``torus`` use ``grid_shape(n)`` (a prime n gives a
    1 x n path / ring). ``seed`` and ``p`` are used by ``erdos_renyi`` only. Names are
    case-insensitive and may use ``-`` for ``_``.
    """
    key = str(name).strip().lower().replace("-", "_")
    n = _check_count(n, "build_topology: n")
    if key not in _REGISTRY:
        raise ValueError(f"Unknown topology {name!r}; allowed: {', '.join(names())}.")
    return _REGISTRY[key](n, seed, p)
