"""The robust aggregation rules: equal to Flower's own strategies where Flower has one, to a
brute-force minimiser for the geometric median, and to BGMD's algebra (memory, top-k)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from strategies.aggregators import AGGREGATORS, make_aggregator

SHAPES = {"conv.weight": (2, 3, 3), "conv.bias": (2,), "fc.weight": (4, 2)}
NAMES = ["mean", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median", "bgmd"]


def flat(model: dict) -> np.ndarray:
    return np.concatenate([np.asarray(model[k], dtype=np.float64).ravel() for k in SHAPES])


def fabricate(n: int, seed: int, outliers: int = 0):
    """A float32 reference model x, n client models x + u_i (the last ``outliers`` far off),
    and their example counts. Outliers sit apart from each other too, so that no two Krum
    scores are near a tie that float32 (Flower) and float64 (ours) could break differently."""
    rng = np.random.default_rng(seed)
    x = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    models = []
    for i in range(n):
        shift = 50.0 * max(0, i - (n - outliers) + 1)
        models.append({k: (v + shift + rng.normal(size=v.shape)).astype(np.float32) for k, v in x.items()})
    return x, models, rng.integers(5, 100, size=n)


def replies(models, sizes):
    """Fresh reply Messages (Flower's FedMedian/FedTrimmedAvg pop arrays out of them)."""
    out = []
    for node, (model, size) in enumerate(zip(models, sizes), start=1):
        sent = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in model.items()}),
            "metrics": MetricRecord({"num-examples": int(size)}),  # Flower's own FedAvg reads this key
        })
        out.append(Message(content=content, reply_to=sent))
    return out


def flower_vs_ours(strategy, aggregator, n, seed, outliers=0):
    x, models, sizes = fabricate(n, seed, outliers)
    arrays, _ = strategy.aggregate_train(1, replies(models, sizes))
    theirs = np.concatenate([a.ravel() for a in arrays.to_numpy_ndarrays()]).astype(np.float64)
    updates = np.stack([flat(m) for m in models]) - flat(x)
    ours = aggregator(updates, sizes.astype(np.float64))
    np.testing.assert_allclose(ours.vector + flat(x), theirs, rtol=1e-6, atol=1e-6)
    return ours, updates, sizes


@pytest.mark.parametrize("n", [1, 4, 7])
def test_mean_is_flowers_fedavg_and_numpys_weighted_average(flower_identity, n):
    ours, updates, sizes = flower_vs_ours(FedAvg(), make_aggregator("mean"), n, seed=n)
    np.testing.assert_allclose(ours.vector, np.average(updates, axis=0, weights=sizes), rtol=1e-12)


@pytest.mark.parametrize("n", [1, 4, 7])
def test_median_is_flowers_fedmedian(flower_identity, n):
    flower_vs_ours(FedMedian(), make_aggregator("median"), n, seed=10 + n, outliers=n // 3)


# Flower cuts int(beta * n) of the float product: for (100, 0.29) that is 28, not 29.
@pytest.mark.parametrize(("n", "beta"), [(1, 0.2), (5, 0.0), (7, 0.2), (10, 0.3), (100, 0.29), (9, 0.49)])
def test_trimmed_mean_is_flowers_fedtrimmedavg(flower_identity, n, beta):
    ours, *_ = flower_vs_ours(FedTrimmedAvg(beta=beta), make_aggregator("trimmed_mean", trim_fraction=beta),
                             n, seed=20 + n, outliers=n // 4)
    assert ours.info["trim_cut"] == int(beta * n)


@pytest.mark.parametrize(("n", "f"), [(1, 0), (3, 0), (5, 2), (9, 2), (12, 3), (6, 5)])
def test_krum_and_multi_krum_are_flowers(flower_identity, n, f):
    ours, *_ = flower_vs_ours(Krum(num_malicious_nodes=f), make_aggregator("krum", byzantine=f), n,
                             seed=30 + n, outliers=f)
    assert ours.selected is not None and len(ours.selected) == 1
    multi = MultiKrum(num_malicious_nodes=f, num_nodes_to_select=max(1, n - f))
    ours, *_ = flower_vs_ours(multi, make_aggregator("multi_krum", byzantine=f), n, seed=30 + n, outliers=f)
    assert len(ours.selected) == max(1, n - f)
    if n > 1:
        assert ours.info["krum_neighbours"] == max(1, n - f - 2)
        assert ours.info["krum_clamped"] == float(n - f - 2 < 1)


def gm_objective(z, points, weights):
    return float(weights @ np.linalg.norm(points - z, axis=1))


@pytest.mark.parametrize("seed", range(6))
def test_geometric_median_minimises_the_weighted_distance_sum(seed):
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)
    points, weights = rng.normal(size=(7, 3)), rng.uniform(0.5, 2.0, size=7)
    result = make_aggregator("geometric_median")(points, weights)
    best = min((minimize(gm_objective, x0, args=(points, weights), method="Nelder-Mead",
                         options={"xatol": 1e-12, "fatol": 1e-15, "maxiter": 40000})
                for x0 in (points.mean(axis=0), result.vector)), key=lambda r: r.fun)
    assert result.info["gm_converged"] == 1
    assert gm_objective(result.vector, points, weights) <= best.fun * (1 + 1e-6)
    np.testing.assert_allclose(result.vector, best.x, atol=1e-4)


def test_geometric_median_at_a_heavy_row_is_that_row():
    """A row holding more than half of the weight is the GM (Kuhn's condition), reached
    exactly rather than crept towards."""
    rng = np.random.default_rng(1)
    points, weights = rng.normal(size=(6, 4)), np.array([6.0, 1, 1, 1, 1, 1])
    result = make_aggregator("geometric_median")(points, weights)
    np.testing.assert_array_equal(result.vector, points[0])
    assert result.info["gm_converged"] == 1 and result.info["gm_iterations"] <= 10


def test_geometric_median_of_two_equal_weight_rows_is_their_midpoint():
    rows = np.array([[0.0, 1.0, 2.0], [4.0, -1.0, 0.0]])
    result = make_aggregator("geometric_median")(rows, np.ones(2))
    np.testing.assert_allclose(result.vector, rows.mean(axis=0), rtol=1e-12)


def test_geometric_median_without_convergence_returns_its_last_iterate():
    rng = np.random.default_rng(2)
    points = rng.standard_exponential(size=(20, 10)) ** 3
    result = make_aggregator("geometric_median", gm_max_iter=1)(points, np.ones(20))
    assert result.info == {"gm_iterations": 1.0, "gm_converged": 0.0}
    assert np.isfinite(result.vector).all() and np.linalg.norm(result.vector) > 0


def attacked(n=10, f=4, d=5, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, d))
    rows[n - f:] = 1e6 + rng.normal(size=(f, d))
    return rows, rows[: n - f]


@pytest.mark.parametrize("seed", range(5))
def test_median_and_gm_resist_a_minority_of_far_rows_and_mean_does_not(seed):
    rows, honest = attacked(seed=seed)
    weights = np.ones(len(rows))
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    median = make_aggregator("median")(rows, weights).vector
    assert ((lo <= median) & (median <= hi)).all()
    mean = make_aggregator("mean")(rows, weights).vector
    assert not ((lo <= mean) & (mean <= hi)).all()
    # The GM can leave the honest box (4 of 10 rows pull it to the box's edge), but it is
    # bounded: f(z) <= f(c) and the triangle inequality give, with a = bad weight fraction,
    # ||z - c|| <= 2 (1 - a) / (1 - 2 a) * max_honest ||u_i - c||, for any point c.
    a = 1 - len(honest) / len(rows)
    center = honest.mean(axis=0)
    bound = 2 * (1 - a) / (1 - 2 * a) * np.linalg.norm(honest - center, axis=1).max()
    for name in ("geometric_median", "bgmd"):
        z = make_aggregator(name, bgmd_fraction=1.0)(rows, weights).vector
        assert np.linalg.norm(z - center) <= bound
    assert np.linalg.norm(mean - center) > 1e5


@pytest.mark.parametrize("seed", range(5))
def test_far_rows_do_not_stop_the_geometric_median_early(seed):
    """Far rows inflate the objective and the mean distance; a stopping test scaled by either
    would stop at the first iterate. The default result is that of a far tighter solve."""
    rows, _ = attacked(seed=seed)
    weights = np.ones(len(rows))
    result = make_aggregator("geometric_median")(rows, weights)
    tight = make_aggregator("geometric_median", gm_tolerance=1e-13, gm_max_iter=100_000)(rows, weights)
    assert result.info["gm_converged"] == 1 and tight.info["gm_converged"] == 1
    assert result.info["gm_iterations"] > 1
    np.testing.assert_allclose(result.vector, tight.vector, atol=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_krum_picks_an_honest_row_when_n_exceeds_2f_plus_2(seed):
    rows, honest = attacked(n=10, f=3, seed=seed)
    result = make_aggregator("krum", byzantine=3)(rows, np.ones(10))
    assert result.selected[0] < len(honest)
    np.testing.assert_array_equal(result.vector, rows[result.selected[0]])
    multi = make_aggregator("multi_krum", byzantine=3)(rows, np.ones(10))
    assert sorted(multi.selected) == list(range(len(honest)))


def test_bgmd_with_every_coordinate_is_the_geometric_median():
    rng = np.random.default_rng(3)
    gm = make_aggregator("geometric_median")
    bgmd = make_aggregator("bgmd", bgmd_fraction=1.0)
    for _ in range(3):
        rows, weights = rng.normal(size=(8, 6)), rng.uniform(1, 3, size=8)
        np.testing.assert_array_equal(bgmd(rows, weights).vector, gm(rows, weights).vector)
        np.testing.assert_array_equal(bgmd.memory, np.zeros(6))


def test_bgmd_keeps_the_heaviest_columns_and_remembers_the_rest():
    rng = np.random.default_rng(4)
    n, d = 9, 20
    bgmd = make_aggregator("bgmd", bgmd_fraction=0.25)
    gm = make_aggregator("geometric_median")
    memory = np.zeros(d)
    for _ in range(3):
        rows = rng.normal(size=(n, d)) * rng.uniform(0.1, 3, size=d)
        weights = rng.uniform(1, 2, size=n)
        g = rows + memory
        chosen = np.sort(np.argsort(np.linalg.norm(g, axis=0))[-5:])
        dropped = np.setdiff1d(np.arange(d), chosen)
        result = bgmd(rows, weights)
        assert result.info["bgmd_k"] == 5
        np.testing.assert_array_equal(result.vector[dropped], 0.0)
        np.testing.assert_allclose(result.vector[chosen], gm(g[:, chosen], weights).vector, rtol=1e-12)
        np.testing.assert_allclose(bgmd.memory[dropped], g[:, dropped].mean(axis=0), rtol=1e-12)
        np.testing.assert_array_equal(bgmd.memory[chosen], 0.0)
        memory = bgmd.memory.copy()


def test_bgmd_loses_no_mass_when_all_rows_agree():
    """With identical rows the GM is that row, so BGMD is top-k with error feedback:
    sum_t result_t + memory_T = sum_t u_t, exactly what the memory is for."""
    rng = np.random.default_rng(5)
    bgmd = make_aggregator("bgmd", bgmd_fraction=0.1)
    sent, total = np.zeros(30), np.zeros(30)
    for _ in range(6):
        u = rng.normal(size=30)
        total += u
        sent += bgmd(np.tile(u, (4, 1)), np.ones(4)).vector
    np.testing.assert_allclose(sent + bgmd.memory, total, rtol=1e-12, atol=1e-12)
    assert np.count_nonzero(bgmd.memory) > 0


def test_bgmd_memory_must_match_the_model_and_reset_clears_it():
    bgmd = make_aggregator("bgmd", bgmd_fraction=0.5)
    assert bgmd.memory is None
    bgmd(np.ones((3, 4)), np.ones(3))
    with pytest.raises(ValueError, match="reset"):
        bgmd(np.ones((3, 5)), np.ones(3))
    bgmd.reset()
    assert bgmd.memory is None
    assert bgmd(np.ones((3, 5)), np.ones(3)).vector.shape == (5,)


@pytest.mark.parametrize("name", NAMES)
def test_every_rule_returns_the_only_row_and_checks_its_inputs(name):
    agg = make_aggregator(name, bgmd_fraction=1.0)
    row = np.array([[0.5, -2.0, 3.0]], dtype=np.float32)
    result = agg(row, np.array([2.0]), keys=[7])
    assert result.vector.dtype == np.float64 and result.vector.shape == (3,)
    np.testing.assert_array_equal(result.vector, row[0])
    assert agg.min_replies() >= 1
    for updates, weights in [(np.zeros((0, 3)), np.zeros(0)), (np.zeros(3), np.ones(1)),
                             (np.array([[1.0, np.nan]]), np.ones(1)), (np.ones((2, 3)), np.ones(3)),
                             (np.ones((2, 3)), np.array([1.0, np.inf])), (np.ones((2, 3)), np.zeros(2))]:
        with pytest.raises(ValueError):
            agg(updates, weights)


def test_min_replies():
    assert make_aggregator("mean", byzantine=3).min_replies() == 1
    assert make_aggregator("median", byzantine=3).min_replies() == 7
    assert make_aggregator("krum", byzantine=2).min_replies() == 7
    assert make_aggregator("multi_krum").min_replies() == 3
    assert make_aggregator("trimmed_mean", trim_fraction=0.2, byzantine=2).min_replies() == 10
    with pytest.raises(ValueError, match="trim_fraction=0"):
        make_aggregator("trimmed_mean", trim_fraction=0.0, byzantine=1).min_replies()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"trim_fraction": 0.5}, "trim_fraction"), ({"trim_fraction": -0.1}, "trim_fraction"),
    ({"byzantine": -1}, "byzantine"), ({"byzantine": 1.5}, "byzantine"),
    ({"gm_tolerance": 0.0}, "gm_tolerance"), ({"gm_max_iter": 0}, "gm_max_iter"),
    ({"gm_smoothing": -1.0}, "gm_smoothing"), ({"bgmd_fraction": 0.0}, "bgmd_fraction"),
    ({"bgmd_fraction": 1.5}, "bgmd_fraction"),
])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_aggregator("mean", **kwargs)


def test_unknown_names_list_the_registered_ones():
    assert sorted(AGGREGATORS) == sorted(NAMES)
    assert all(AGGREGATORS[name].name == name for name in NAMES)
    with pytest.raises(ValueError, match="geometric_median") as err:
        make_aggregator("fedmedian")
    assert all(name in str(err.value) for name in NAMES)


# Nearest Neighbour Mixing (Allouah et al., AISTATS 2023) before the rule.

def brute_force_nnm(rows: np.ndarray, keep: int) -> np.ndarray:
    out = []
    for row in rows:
        order = np.argsort([np.linalg.norm(row - other) for other in rows], kind="stable")
        out.append(rows[order[:keep]].mean(axis=0))
    return np.stack(out)


@pytest.mark.parametrize("seed", range(4))
def test_nnm_is_the_mean_of_each_rows_nearest_rows(seed):
    from strategies.aggregators import nearest_neighbour_mixing

    rows = np.random.default_rng(seed).normal(size=(9, 6)) * [1, 2, 3, 4, 5, 6] + 100.0
    for keep in (1, 3, 5, 9):
        np.testing.assert_allclose(nearest_neighbour_mixing(rows, keep), brute_force_nnm(rows, keep),
                                   rtol=1e-12, atol=1e-9)
    # keep = 1: every row is itself, duplicates included; keep = n: every row is the mean.
    twice = np.vstack([rows, rows[:2]])
    np.testing.assert_array_equal(nearest_neighbour_mixing(twice, 1), twice)
    np.testing.assert_allclose(nearest_neighbour_mixing(rows, 9), np.tile(rows.mean(axis=0), (9, 1)))


def test_nnm_neighbours_default_to_the_most_a_half_breakdown_rule_tolerates():
    from strategies.aggregators import nnm_neighbours

    assert [nnm_neighbours(n, 0) for n in (1, 2, 3, 4, 10, 11)] == [1, 2, 2, 3, 6, 6]
    assert nnm_neighbours(10, 3) == 7 and nnm_neighbours(4, 9) == 1


@pytest.mark.parametrize("name", NAMES)
def test_pre_aggregation_modes(name):
    """`none` is the bare rule; `nnm` is the rule on the mixed rows; `auto` is `nnm` except
    for the mean, which it leaves alone (FedAvg stays the papers' FedAvg)."""
    from strategies.aggregators import nearest_neighbour_mixing

    rows = np.random.default_rng(7).normal(size=(10, 8))
    weights = np.arange(1.0, 11.0)
    kw = {"byzantine": 3, "bgmd_fraction": 0.5}
    bare = make_aggregator(name, **kw)(rows, weights)
    mixed = make_aggregator(name, pre_aggregation="nnm", **kw)(rows, weights)
    auto = make_aggregator(name, pre_aggregation="auto", **kw)(rows, weights)
    np.testing.assert_array_equal(
        mixed.vector, make_aggregator(name, **kw)(nearest_neighbour_mixing(rows, 7), weights).vector)
    assert mixed.info["nnm_neighbours"] == 7.0 and "nnm_neighbours" not in bare.info
    np.testing.assert_array_equal(auto.vector, (bare if name == "mean" else mixed).vector)
    assert not np.allclose(mixed.vector, bare.vector)


def heterogeneous_sign_flip(seed: int, n: int = 10, f: int = 3, d: int = 50):
    """Honest updates g + spread (the clients' heterogeneity, larger than g); the first f
    send the sign-flipped honest update they would have sent."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=d)
    rows = g + 2.0 * rng.normal(size=(n, d))
    rows[:f] *= -1.0
    return rows, rows[f:].mean(axis=0)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "geometric_median", "bgmd", "krum", "multi_krum"])
def test_nnm_brings_robust_rules_closer_to_the_honest_mean_on_heterogeneous_updates(name):
    """The point of mixing: on heterogeneous honest rows under a sign flip, each rule's error
    against the honest mean shrinks (averaged over seeds), f told or not."""
    errors = {}
    for pre in ("none", "nnm"):
        for byzantine in (0, 3):
            kw = {"byzantine": byzantine, "trim_fraction": 0.3, "bgmd_fraction": 1.0, "pre_aggregation": pre}
            errs = []
            for seed in range(20):
                rows, honest_mean = heterogeneous_sign_flip(seed)
                z = make_aggregator(name, **kw)(rows, np.ones(len(rows))).vector
                errs.append(np.linalg.norm(z - honest_mean) / np.linalg.norm(honest_mean))
            errors[pre, byzantine] = float(np.mean(errs))
    for byzantine in (0, 3):
        if name in ("krum", "multi_krum") and byzantine == 0:
            continue  # f = 0 is not a setting these rules are meant for
        assert errors["nnm", byzantine] < 0.8 * errors["none", byzantine], errors


@pytest.mark.parametrize("seed", range(3))
def test_nnm_keeps_robust_rules_inside_the_honest_box_under_far_rows(seed):
    rows, honest = attacked(seed=seed)  # 4 of 10 rows near 1e6
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    for name in ("median", "trimmed_mean"):
        z = make_aggregator(name, trim_fraction=0.4, pre_aggregation="nnm")(rows, np.ones(10)).vector
        assert ((lo <= z) & (z <= hi)).all(), name
    for name in ("geometric_median", "bgmd", "multi_krum"):
        rule = make_aggregator(name, byzantine=4, bgmd_fraction=1.0, pre_aggregation="nnm")
        z = rule(rows, np.ones(10)).vector
        assert np.linalg.norm(z - honest.mean(axis=0)) < 10.0, name
