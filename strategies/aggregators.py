"""Robust aggregation rules over client updates, as plain numpy (no flwr, no torch).

Every rule maps an (n, d) array of client *updates* (x_i - x, or gradients) and n server-side
weights to one (d,) float64 vector. Mean, median, trimmed mean, Krum and the geometric median
commute with translation, so applying them to updates or to models is the same; BGMD does not
(its column norms and its memory are about updates), which is why the caller passes updates.

* ``mean``: sum_i w_i u_i / sum_i w_i. One bad row moves it anywhere (breakdown 0).
* ``median``: coordinate-wise median, unweighted (Yin et al., ICML 2018; Flower's FedMedian).
  Breakdown 1/2 per coordinate.
* ``trimmed_mean``: per coordinate, drop the int(beta*n) smallest and largest values and average
  the rest, unweighted (Yin et al. 2018; Flower's FedTrimmedAvg). Tolerates int(beta*n) bad rows.
* ``krum`` / ``multi_krum``: Blanchard et al., NeurIPS 2017. Score each row by the sum of squared
  distances to its n - f - 2 nearest other rows; Krum returns the best row, Multi-Krum the
  weighted mean of the n - f best (as Flower's MultiKrum averages what it selects). Needs
  n >= 2f + 3 to tolerate f bad rows.
* ``geometric_median``: argmin_z sum_i w_i ||u_i - z|| by smoothed Weiszfeld (Weiszfeld 1937;
  Pillutla, Kakade, Harchaoui, RFA, IEEE TSP 2022). Breakdown 1/2 of the weight.
* ``bgmd``: Block-coordinate Geometric Median Descent (Acharya et al., AISTATS 2022): the GM
  over the k heaviest columns of updates + memory, the rest kept as error-feedback memory.
  Breakdown 1/2, at a GM cost in k instead of d dimensions.

Before the rule, ``pre_aggregation='nnm'`` replaces each row by the mean of its n - f
nearest rows, itself included: Nearest Neighbour Mixing (Allouah, Farhadkhani, Guerraoui,
Gupta, Pinot, Stephan, *Fixing by Mixing: A Recipe for Optimal Byzantine ML under
Heterogeneity*, AISTATS 2023). ``'auto'``, the config's default, is ``'nnm'`` for every rule
but the mean; ``'none'``, the bare rule, is this module's default. Honest rows of
heterogeneous clients are pulled together (an honest row's n - f nearest are honest when at
most f rows are bad), so the rule after it no longer trades the honest clients' spread for
robustness. f is ``byzantine``, or, when that is 0, ceil(n/2) - 1: the most a rule of
breakdown 1/2 tolerates. docs/robustness.md measures it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from results import metrics as M

_controller = None


def one_blas_thread():
    """A context in which numpy's BLAS runs in the calling thread. The server and the
    one-process engines interleave numpy math with torch training on the same cores;
    OpenBLAS's worker threads spin after each call and starve torch's: measured here, 5
    rounds of the digits engine took 60 s instead of 4.5 s. The matrices are small (n rows)."""
    global _controller
    from threadpoolctl import ThreadpoolController

    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


@dataclass
class AggregateResult:
    vector: np.ndarray
    info: dict[str, float] = field(default_factory=dict)
    selected: list[int] | None = None


@dataclass(frozen=True)
class AggregatorSettings:
    """The knobs every rule reads from; validated once, when built."""

    trim_fraction: float = 0.1
    byzantine: int = 0
    gm_tolerance: float = 1e-6
    gm_max_iter: int = 100
    gm_smoothing: float = 1e-6
    bgmd_fraction: float = 0.1
    bgmd_memory: str = "mean"
    pre_aggregation: str = "none"

    def __post_init__(self):
        def count(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        rules = [("trim_fraction", 0.0 <= self.trim_fraction < 0.5, "in [0, 0.5)"),
                 ("byzantine", count(self.byzantine) and self.byzantine >= 0, "an integer >= 0"),
                 ("gm_tolerance", 0.0 < self.gm_tolerance < np.inf, "> 0"),
                 ("gm_max_iter", count(self.gm_max_iter) and self.gm_max_iter >= 1, "an integer >= 1"),
                 ("gm_smoothing", 0.0 < self.gm_smoothing < np.inf, "> 0"),
                 ("bgmd_fraction", 0.0 < self.bgmd_fraction <= 1.0, "in (0, 1]")]
        problems = [f"{key} must be {what}, got {getattr(self, key)!r}" for key, ok, what in rules if not ok]
        if self.bgmd_memory not in ("mean", "median"):
            problems.append(f"bgmd_memory must be 'mean' or 'median', got {self.bgmd_memory!r}")
        if self.pre_aggregation not in PRE_AGGREGATIONS:
            problems.append(f"pre_aggregation must be one of {PRE_AGGREGATIONS}, "
                            f"got {self.pre_aggregation!r}")
        if problems:
            raise ValueError("; ".join(problems) + ".")


AGGREGATORS: dict[str, type[Aggregator]] = {}
PRE_AGGREGATIONS = ("auto", "none", "nnm")


def pairwise_sq_distances(u: np.ndarray) -> np.ndarray:
    """(n, n) squared distances between rows. Gram trick on rows centred first (distances
    are translation-invariant; centring keeps ||a||^2 + ||b||^2 - 2 a.b from cancelling),
    O(n d) memory; the diagonal is exactly 0."""
    c = u - u.mean(axis=0)
    sq = np.einsum("ij,ij->i", c, c)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (c @ c.T), 0.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def nnm_neighbours(n: int, byzantine: int) -> int:
    """How many rows NNM averages: n - f, f = ``byzantine`` or (when 0) ceil(n/2) - 1."""
    f = byzantine if byzantine > 0 else (n + 1) // 2 - 1
    return max(1, n - f)


def nearest_neighbour_mixing(u: np.ndarray, neighbours: int) -> np.ndarray:
    """Row i -> the plain mean of the ``neighbours`` rows nearest to row i, itself first
    (ties by row index)."""
    dist = pairwise_sq_distances(u)
    np.fill_diagonal(dist, -1.0)  # a row is its own nearest, even among duplicates
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :neighbours]
    return u[nearest].mean(axis=1)


def check_inputs(updates, weights) -> tuple[np.ndarray, np.ndarray]:
    """The contract: (n, d) finite updates, n >= 1, d >= 1; n finite weights >= 0, sum > 0."""
    u = np.asarray(updates, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] == 0 or u.shape[1] == 0:
        raise ValueError(f"updates must be a non-empty (n, d) array, got shape {u.shape}.")
    if w.shape != (u.shape[0],):
        raise ValueError(f"weights must have shape ({u.shape[0]},), got {w.shape}.")
    if not np.isfinite(u).all():
        raise ValueError("updates hold NaN or infinite values.")
    if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ValueError("weights must be finite, non-negative and not all zero.")
    return u, w


class Aggregator:
    """A rule, registered under its name by ``class Rule(Aggregator, name="rule")``."""

    name: str = "base"

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            AGGREGATORS[name] = cls

    def __init__(self, settings: AggregatorSettings | None = None):
        self.settings = settings or AggregatorSettings()

    def __call__(self, updates, weights, keys: list | None = None) -> AggregateResult:
        u, w = check_inputs(updates, weights)
        with one_blas_thread():
            mixing = self.mixing_neighbours(u.shape[0])
            if mixing is None:
                return self.aggregate(u, w)
            result = self.aggregate(nearest_neighbour_mixing(u, mixing), w)
            result.info[M.NNM_NEIGHBOURS] = float(mixing)
            return result

    def mixing_neighbours(self, n: int) -> int | None:
        """The rows NNM averages before this rule, or None when it is off."""
        mode = self.settings.pre_aggregation
        if mode == "none" or (mode == "auto" and isinstance(self, Mean)):
            return None
        return nnm_neighbours(n, self.settings.byzantine)

    def aggregate(self, u: np.ndarray, w: np.ndarray) -> AggregateResult:
        raise NotImplementedError

    def min_replies(self) -> int:
        """Fewest rows for the rule to tolerate ``settings.byzantine`` bad ones (1 for mean)."""
        return 2 * self.settings.byzantine + 1

    def state_dict(self) -> dict:
        """What the rule carries from one call to the next (a checkpoint holds it)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got {sorted(state)}.")


class Mean(Aggregator, name="mean"):
    def aggregate(self, u, w):
        return AggregateResult(w @ u / w.sum(), {})

    def min_replies(self) -> int:
        return 1


class Median(Aggregator, name="median"):
    def aggregate(self, u, w):
        return AggregateResult(np.median(u, axis=0), {})


class TrimmedMean(Aggregator, name="trimmed_mean"):
    def aggregate(self, u, w):
        # Flower's trim_mean: cut = int(beta * n) on each side (the float product, so
        # int(0.29 * 100) = 28), then the mean of sorted positions [cut, n - cut).
        n = u.shape[0]
        cut = int(self.settings.trim_fraction * n)
        kept = np.partition(u, (cut, n - cut - 1), axis=0)[cut:n - cut]
        return AggregateResult(kept.mean(axis=0), {M.TRIM_CUT: float(cut)})

    def min_replies(self) -> int:
        f, beta = self.settings.byzantine, self.settings.trim_fraction
        if f == 0:
            return 1
        if beta == 0:
            raise ValueError(f"trimmed_mean with trim_fraction=0 cannot tolerate byzantine={f}.")
        n = 2 * f + 1
        while int(beta * n) < f:
            n += 1
        return n


def krum_scores(u: np.ndarray, neighbours: int) -> np.ndarray:
    """Sum of squared distances from each row to its ``neighbours`` nearest other rows."""
    dist = pairwise_sq_distances(u)
    np.fill_diagonal(dist, np.inf)
    return np.sort(dist, axis=1)[:, :neighbours].sum(axis=1)


class Krum(Aggregator, name="krum"):
    """score_i = sum_{j in N_i} ||u_i - u_j||^2, N_i = the n - f - 2 rows nearest to u_i (at
    least 1, as Flower clamps it); keep the `to_keep` lowest scores, weighted mean of those."""

    def to_keep(self, n: int) -> int:
        return 1

    def aggregate(self, u, w):
        n = u.shape[0]
        wanted = n - self.settings.byzantine - 2
        neighbours = max(1, wanted)
        info = {M.KRUM_NEIGHBOURS: float(neighbours), M.KRUM_CLAMPED: float(wanted < 1)}
        best = np.argsort(krum_scores(u, neighbours), kind="stable")[: self.to_keep(n)]
        vector = u[best[0]].copy() if len(best) == 1 else w[best] @ u[best] / w[best].sum()
        info[M.KRUM_SELECTED] = float(len(best))
        return AggregateResult(vector, info, [int(i) for i in best])

    def min_replies(self) -> int:
        return 2 * self.settings.byzantine + 3


class MultiKrum(Krum, name="multi_krum"):
    def to_keep(self, n: int) -> int:
        return max(1, n - self.settings.byzantine)


def weiszfeld(u: np.ndarray, w: np.ndarray, s: AggregatorSettings) -> tuple[np.ndarray, dict]:
    """Weighted smoothed Weiszfeld for argmin_z sum_i w_i ||u_i - z||:

        beta_i = w_i / max(nu, ||u_i - z||)
        z     <- sum_i beta_i u_i / sum_i beta_i

    nu (gm_smoothing) keeps a step onto a data point finite. Starts from the coordinate-wise
    median, robust itself, so that far bad rows do not put the first iterate among them (the
    authors start from the mean). Stops when ||z_new - z|| <= tol * max(nu, s), s the weighted
    median of ||u_i - z||: a spread that bad rows cannot inflate and that scales with the updates.
    Weiszfeld creeps sublinearly towards a GM that is a data point, so each pass also tests the
    row u_j nearest to z with Kuhn's (1973) optimality condition, made strict so that two equal
    rows give their midpoint: u_j is the GM if
        || sum_{i: u_i != u_j} w_i (u_i - u_j) / ||u_i - u_j|| || < sum_{i: u_i = u_j} w_i.
    Never returns zeros (the authors' code does): without convergence, the last iterate."""
    w = w / w.sum()
    z = np.median(u, axis=0)
    for k in range(1, s.gm_max_iter + 1):
        dist = np.linalg.norm(u - z, axis=1)
        j = int(np.argmin(dist))
        diff = u - u[j]
        dj = np.linalg.norm(diff, axis=1)
        far = dj > 0
        if np.linalg.norm((w[far] / dj[far]) @ diff[far]) < w[~far].sum():
            return u[j].copy(), {M.GM_ITERATIONS: float(k), M.GM_CONVERGED: 1.0}
        beta = w / np.maximum(s.gm_smoothing, dist)
        z_new = beta @ u / beta.sum()
        step = np.linalg.norm(z_new - z)
        z = z_new
        order = np.argsort(dist)
        spread = dist[order][np.searchsorted(np.cumsum(w[order]), 0.5)]
        if step <= s.gm_tolerance * max(spread, s.gm_smoothing):
            return z, {M.GM_ITERATIONS: float(k), M.GM_CONVERGED: 1.0}
    return z, {M.GM_ITERATIONS: float(s.gm_max_iter), M.GM_CONVERGED: 0.0}


class GeometricMedian(Aggregator, name="geometric_median"):
    def aggregate(self, u, w):
        return AggregateResult(*weiszfeld(u, w, self.settings))


class BGMD(Aggregator, name="bgmd"):
    """Acharya et al., AISTATS 2022, Algorithm 1 (the step gamma is already in the updates):

        G   = U + 1 m^T                        (the same memory m on every row)
        J   = the k columns of G with the largest L2 norm, k = max(1, round(fraction * d))
        out = GM(G[:, J]) on J, 0 elsewhere
        m  <- (1/n) sum_i G[i, :] with the columns J zeroed   (error feedback)

    ``memory`` (None before the first call, meaning zeros) is kept between calls. The
    paper's memory is the plain mean of the residual rows (so is the authors' code), which
    a minority can move anywhere on the columns left out: a sign flip scaled by 10 poisons
    it (docs/robustness.md). ``bgmd_memory='median'`` (ours, not the paper's) takes the
    coordinate-wise median of the residual rows instead, at O(n d log n)."""

    def __init__(self, settings: AggregatorSettings | None = None):
        super().__init__(settings)
        self.memory: np.ndarray | None = None

    def reset(self) -> None:
        self.memory = None

    def state_dict(self) -> dict:
        return {"memory": None if self.memory is None else self.memory.copy()}

    def load_state_dict(self, state: dict) -> None:
        memory = state["memory"]
        self.memory = None if memory is None else np.array(memory, dtype=np.float64)

    def aggregate(self, u, w):
        d = u.shape[1]
        if self.memory is not None and self.memory.shape != (d,):
            raise ValueError(f"bgmd memory has {self.memory.shape[0]} coordinates but the updates "
                             f"have {d}; call reset() when the model changes.")
        g = u if self.memory is None else u + self.memory
        k = min(d, max(1, round(self.settings.bgmd_fraction * d)))
        if k == d:  # no copy, so that fraction 1 is the geometric median bit for bit
            cols, block = np.arange(d), g
        else:
            cols = np.sort(np.argpartition(np.linalg.norm(g, axis=0), d - k)[d - k:])
            block = g[:, cols]
        z, info = weiszfeld(block, w, self.settings)
        vector = np.zeros(d)
        vector[cols] = z
        memory = g.mean(axis=0) if self.settings.bgmd_memory == "mean" else np.median(g, axis=0)
        memory[cols] = 0.0
        self.memory = memory
        info.update({M.BGMD_K: float(k), M.BGMD_MEMORY_NORM: float(np.linalg.norm(memory))})
        return AggregateResult(vector, info, None)


def names() -> list[str]:
    """Every registered rule (the config's allowed ``strategy.aggregator`` values)."""
    return sorted(AGGREGATORS)


def make_aggregator(name: str, *, trim_fraction: float = 0.1, byzantine: int = 0,
                    gm_tolerance: float = 1e-6, gm_max_iter: int = 100, gm_smoothing: float = 1e-6,
                    bgmd_fraction: float = 0.1, bgmd_memory: str = "mean",
                    pre_aggregation: str = "none") -> Aggregator:
    """The rule registered as ``name``, with its settings checked (ValueError otherwise)."""
    if name not in AGGREGATORS:
        raise ValueError(f"Unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}.")
    settings = AggregatorSettings(trim_fraction=trim_fraction, byzantine=byzantine,
                                  gm_tolerance=gm_tolerance, gm_max_iter=gm_max_iter,
                                  gm_smoothing=gm_smoothing, bgmd_fraction=bgmd_fraction,
                                  bgmd_memory=bgmd_memory, pre_aggregation=pre_aggregation)
    return AGGREGATORS[name](settings)
