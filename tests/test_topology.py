"""Mixing matrices and the pure Gossip-PGA math in ``strategies.topology``."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.topology import (
    beta,
    build_topology,
    check_mixing_matrix,
    consensus_distance,
    degree,
    erdos_renyi,
    exponential,
    fully_connected,
    global_average,
    gossip,
    grid,
    grid_shape,
    is_connected,
    is_global_round,
    metropolis_hastings,
    one_peer_exponential,
    ring,
    star,
    torus,
)
from strategies.topology import names as topology_names

SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16)
SYMMETRIC = ("ring", "grid", "torus", "fully_connected", "star", "erdos_renyi", "identity")


def path_adjacency(n: int) -> np.ndarray:
    A = np.zeros((n, n), dtype=int)
    for i in range(n - 1):
        A[i, i + 1] = A[i + 1, i] = 1
    return A


def assert_doubly_stochastic(W: np.ndarray) -> None:
    assert W.dtype == np.float64
    assert (W >= 0).all()
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(W.sum(axis=0), 1.0, atol=1e-12)
    check_mixing_matrix(W)


# ------------------------------------------------------------------ every topology, many n


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", topology_names())
def test_every_topology_is_doubly_stochastic(name, n):
    schedule = build_topology(name, n, p=0.9)
    for step in range(6):
        W = schedule(step)
        assert W.shape == (n, n)
        assert_doubly_stochastic(W)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", SYMMETRIC)
def test_undirected_topologies_are_symmetric(name, n):
    W = build_topology(name, n, p=0.9)(0)
    np.testing.assert_array_equal(W, W.T)


@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (1, 5), (3, 5)])
def test_grid_and_torus_any_shape(rows, cols):
    for W in (grid(rows, cols), torus(rows, cols)):
        assert W.shape == (rows * cols, rows * cols)
        assert_doubly_stochastic(W)
        np.testing.assert_array_equal(W, W.T)


def test_exponential_is_directed_but_doubly_stochastic():
    W = exponential(8)
    assert not np.array_equal(W, W.T)
    # node i sends to i + 1, i + 2, i + 4: row i receives from i - 1, i - 2, i - 4
    expected = np.zeros(8)
    expected[[0, 7, 6, 4]] = 1 / 4
    np.testing.assert_allclose(W[0], expected)
    assert W[1, 0] == W[2, 0] == W[4, 0] == 1 / 4


@pytest.mark.parametrize("n", [3, 5, 6, 7, 12])
def test_exponential_non_power_of_two(n):
    W = exponential(n)
    tau = int(np.ceil(np.log2(n)))
    assert_doubly_stochastic(W)
    # tau distinct neighbours plus self, each 1 / (1 + tau); no duplicates, no self offset
    assert degree(W) == tau
    np.testing.assert_allclose(W[W > 0], 1 / (1 + tau))
    assert np.count_nonzero(W, axis=1).tolist() == [1 + tau] * n


def test_small_special_cases():
    np.testing.assert_array_equal(ring(1), [[1.0]])
    np.testing.assert_array_equal(ring(2), np.full((2, 2), 0.5))
    np.testing.assert_allclose(ring(3), np.full((3, 3), 1 / 3))
    np.testing.assert_array_equal(exponential(1), [[1.0]])
    np.testing.assert_array_equal(exponential(2), np.full((2, 2), 0.5))
    np.testing.assert_array_equal(one_peer_exponential(1, 5), [[1.0]])
    np.testing.assert_array_equal(one_peer_exponential(2, 3), np.full((2, 2), 0.5))
    # torus with a side of 2: the two neighbours along that side coincide and count once
    np.testing.assert_allclose(torus(2, 2), grid(2, 2))
    # a 1 x n torus is the ring
    np.testing.assert_allclose(torus(1, 6), ring(6))


def test_ring_weights():
    W = ring(5)
    assert W[0, 0] == W[0, 1] == W[0, 4] == 1 / 3
    assert W[0, 2] == W[0, 3] == 0
    assert degree(W) == 2


def test_star_weights():
    n = 5
    W = star(n)
    assert W[0, 0] == pytest.approx(1 / n)
    np.testing.assert_allclose(W[0, 1:], 1 / n)
    np.testing.assert_allclose(np.diag(W)[1:], 1 - 1 / n)
    assert W[1, 2] == 0
    assert degree(W) == n - 1


def test_grid_weights_3x3():
    W = grid(3, 3)
    # corner 0 (deg 2) - edge node 1 (deg 3): 1/4; edge 1 - centre 4 (deg 4): 1/5
    assert W[0, 1] == pytest.approx(1 / 4)
    assert W[1, 4] == pytest.approx(1 / 5)
    assert W[0, 0] == pytest.approx(1 / 2)
    assert W[4, 4] == pytest.approx(1 / 5)
    assert W[0, 4] == 0 and W[2, 3] == 0  # no diagonal links, no wrap-around


# ------------------------------------------------------------------ beta


def test_beta_ring_matches_known_values():
    assert round(beta(ring(8)), 3) == 0.805
    assert round(beta(ring(16)), 3) == 0.949
    # closed form for the 1/3 ring: 1/3 + 2/3 cos(2 pi / n)
    for n in (5, 8, 16, 32):
        assert beta(ring(n)) == pytest.approx(1 / 3 + 2 / 3 * np.cos(2 * np.pi / n))


@pytest.mark.parametrize("n", [1, 2, 3, 8, 16])
def test_beta_fully_connected_is_zero(n):
    assert beta(fully_connected(n)) == 0.0


def test_beta_exponential_and_identity():
    for n in (4, 8, 16, 32):
        assert 1 - beta(exponential(n)) == pytest.approx(2 / (1 + np.log2(n)))
    assert beta(np.eye(8)) == pytest.approx(1.0)


# ------------------------------------------------------------------ one-peer exponential


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_one_peer_product_is_exact_average(n):
    tau = int(np.log2(n))
    for start in (0, 3):  # any tau consecutive steps
        P = np.eye(n)
        for step in range(start, start + tau):
            P = one_peer_exponential(n, step) @ P
        np.testing.assert_allclose(P, np.full((n, n), 1 / n), atol=1e-15)


def test_one_peer_is_one_peer_and_subgraph_of_exponential():
    n = 16
    E = exponential(n)
    for step in range(8):
        W = one_peer_exponential(n, step)
        assert_doubly_stochastic(W)
        assert degree(W) == 1
        assert ((W > 0) <= (E > 0)).all()
    np.testing.assert_array_equal(one_peer_exponential(n, 1), one_peer_exponential(n, 5))


def test_one_peer_non_power_of_two_does_not_reach_average():
    n = 6  # tau = 3 steps are doubly stochastic but their product is not 11^T/n
    P = np.eye(n)
    for step in range(3):
        P = one_peer_exponential(n, step) @ P
    assert_doubly_stochastic(P)
    assert not np.allclose(P, 1 / n)


def test_build_topology_one_peer_cycles():
    schedule = build_topology("one_peer_exponential", 8)
    for step in range(7):
        np.testing.assert_array_equal(schedule(step), one_peer_exponential(8, step))
    assert schedule(0) is schedule(3)


# ------------------------------------------------------------------ gossip math


def test_gossip_preserves_mean():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 7))
    for name in topology_names():
        W = build_topology(name, 16)(1)
        Y = gossip(W, X)
        assert Y.shape == X.shape
        np.testing.assert_allclose(Y.mean(axis=0), X.mean(axis=0), atol=1e-12)


def test_gossip_contracts_consensus_distance_by_beta_squared():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(8, 5))
    W = ring(8)
    assert consensus_distance(gossip(W, X)) <= beta(W) ** 2 * consensus_distance(X) + 1e-12
    assert consensus_distance(gossip(W, X)) < consensus_distance(X)


def test_consensus_distance():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, 4))
    assert consensus_distance(X) > 0
    Y = global_average(X)
    assert Y.shape == X.shape
    np.testing.assert_allclose(Y, np.tile(X.mean(axis=0), (6, 1)))
    assert consensus_distance(Y) == pytest.approx(0.0, abs=1e-24)
    # by hand: models 0 and 2 around mean 1 -> ((1)^2 + (1)^2) / 2
    assert consensus_distance(np.array([[0.0], [2.0]])) == pytest.approx(1.0)
    # equals gossip with 11^T/n
    np.testing.assert_allclose(gossip(fully_connected(6), X), Y, atol=1e-14)


def test_gossip_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="4 nodes but X holds 3"):
        gossip(ring(4), np.zeros((3, 2)))


# ------------------------------------------------------------------ check_mixing_matrix


def test_check_mixing_matrix_accepts_valid():
    check_mixing_matrix(ring(8))
    check_mixing_matrix(np.eye(3))


def test_check_mixing_matrix_rejects_row_sum():
    W = ring(4)
    W[2, 2] += 0.1
    with pytest.raises(ValueError, match=r"not doubly stochastic: row 2 sums to 1\.1"):
        check_mixing_matrix(W)


def test_check_mixing_matrix_rejects_column_sum():
    # rows sum to 1, columns do not
    W = np.array([[1.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="column 0 sums to 2"):
        check_mixing_matrix(W)


def test_check_mixing_matrix_rejects_negative_entry():
    W = np.array([[1.5, -0.5], [-0.5, 1.5]])  # rows and columns sum to 1
    with pytest.raises(ValueError, match=r"negative entries.*W\[0, 1\] = -0\.5"):
        check_mixing_matrix(W)


def test_check_mixing_matrix_rejects_nan_and_shape():
    W = ring(4)
    W[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*W\[1, 3\] = nan"):
        check_mixing_matrix(W)
    with pytest.raises(ValueError, match="must be square"):
        check_mixing_matrix(np.full((2, 3), 0.5))


# ------------------------------------------------------------------ is_global_round


def test_is_global_round_period_one_always():
    assert all(is_global_round(t, 1) for t in range(50))


def test_is_global_round_period_four():
    assert [t for t in range(12) if is_global_round(t, 4)] == [3, 7, 11]


@pytest.mark.parametrize("period", [0, -2, 2.0, True])
def test_is_global_round_rejects_bad_period(period):
    with pytest.raises(ValueError, match="period must be an integer >= 1"):
        is_global_round(0, period)


# ------------------------------------------------------------------ Erdos-Renyi, MH


def test_erdos_renyi_connected_and_deterministic():
    for seed in range(5):
        W = erdos_renyi(20, 0.2, seed)
        assert is_connected(W > 0)
        assert beta(W) < 1 - 1e-9
        np.testing.assert_array_equal(W, erdos_renyi(20, 0.2, seed))
    assert not np.array_equal(erdos_renyi(20, 0.2, 0), erdos_renyi(20, 0.2, 1))


def test_erdos_renyi_gives_up_with_advice():
    with pytest.raises(ValueError, match="raise p"):
        erdos_renyi(10, 0.0, 0)


def test_metropolis_hastings_path_by_hand():
    # path 0 - 1 - 2 - 3, degrees 1, 2, 2, 1: every edge weight 1/(1 + 2) = 1/3
    expected = np.array(
        [
            [2 / 3, 1 / 3, 0, 0],
            [1 / 3, 1 / 3, 1 / 3, 0],
            [0, 1 / 3, 1 / 3, 1 / 3],
            [0, 0, 1 / 3, 2 / 3],
        ]
    )
    np.testing.assert_allclose(metropolis_hastings(path_adjacency(4)), expected)
    # path of 2: both degree 1, edge 1/2
    np.testing.assert_allclose(metropolis_hastings(path_adjacency(2)), np.full((2, 2), 0.5))
    np.testing.assert_array_equal(metropolis_hastings(np.zeros((1, 1))), [[1.0]])


def test_metropolis_hastings_after_a_node_drops_out():
    # rebuild W on the surviving nodes of a 3 x 3 grid without its centre (an 8-cycle)
    A = (grid(3, 3) > 0) & ~np.eye(9, dtype=bool)
    keep = [i for i in range(9) if i != 4]
    A = A[np.ix_(keep, keep)]
    assert is_connected(A)
    W = metropolis_hastings(A)
    assert_doubly_stochastic(W)
    np.testing.assert_array_equal(W, W.T)
    np.testing.assert_allclose(W[W > 0], 1 / 3)  # every survivor now has degree 2


def test_metropolis_hastings_rejects_bad_adjacency():
    A = path_adjacency(3)
    A[0, 2] = 1
    with pytest.raises(ValueError, match="symmetric"):
        metropolis_hastings(A)
    with pytest.raises(ValueError, match="self loops"):
        metropolis_hastings(np.eye(3))
    with pytest.raises(ValueError, match="0 or 1"):
        metropolis_hastings(np.full((2, 2), 0.5))


# ------------------------------------------------------------------ build_topology


def test_build_topology_rejects_unknown_name():
    with pytest.raises(
        ValueError, match="Unknown topology 'hypercube'.*one_peer_exponential.*ring"
    ):
        build_topology("hypercube", 8)


def test_build_topology_static_and_read_only():
    schedule = build_topology("ring", 8)
    W = schedule(0)
    np.testing.assert_array_equal(W, ring(8))
    assert schedule(41) is W
    with pytest.raises(ValueError):
        W[0, 0] = 1.0
    np.testing.assert_array_equal(build_topology("identity", 5)(3), np.eye(5))
    np.testing.assert_array_equal(
        build_topology("One-Peer-Exponential", 4)(1), one_peer_exponential(4, 1)
    )


def test_build_topology_grid_shapes():
    assert grid_shape(16) == (4, 4)
    assert grid_shape(12) == (3, 4)
    assert grid_shape(7) == (1, 7)
    assert grid_shape(1) == (1, 1)
    np.testing.assert_array_equal(build_topology("grid", 12)(0), grid(3, 4))
    np.testing.assert_array_equal(build_topology("torus", 16)(0), torus(4, 4))
    np.testing.assert_array_equal(
        build_topology("grid", 7)(0), metropolis_hastings(path_adjacency(7))
    )


def test_build_topology_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        build_topology("ring", 0)


def test_degree():
    assert degree(ring(16)) == 2
    assert degree(torus(4, 4)) == 4
    assert degree(grid(4, 4)) == 4
    assert degree(exponential(16)) == 4
    assert degree(fully_connected(8)) == 7
    assert degree(np.eye(4)) == 0
