"""Splitting a training pool over clients: ``tasks.partition.partition_indices`` and
``tasks.client_split``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import tasks
from conf import load_config
from tasks.partition import partition_indices
from tasks.shakespeare import assign_roles_to_clients

CORPUS = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"
DIGITS_TRAIN = 1797 - 359  # digits pool after the stratified 20 % test split
# PathologicalPartitioner warns about classes no client draws; that is the point of the
# 4-client case below.
ignore_unused_classes = pytest.mark.filterwarnings("ignore:Classes.*will NOT be used")


def all_parts(scheme, num_partitions, labels, groups=None, **kwargs) -> list[np.ndarray]:
    return [
        partition_indices(scheme, num_partitions, pid, labels, groups, **kwargs)
        for pid in range(num_partitions)
    ]


def assert_disjoint(parts: list[np.ndarray], pool: int) -> np.ndarray:
    """Every part is a sorted set of valid indices and no index is in two parts."""
    for part in parts:
        assert part.dtype == np.int64
        assert (np.diff(part) > 0).all()  # sorted, no repeats
        assert part.size == 0 or (part[0] >= 0 and part[-1] < pool)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)
    return joined


def mean_tv_to_global(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean over clients of TV(client label distribution, global label distribution)."""
    classes = labels.max() + 1
    overall = np.bincount(labels, minlength=classes) / len(labels)
    tvs = [
        0.5 * np.abs(np.bincount(labels[p], minlength=classes) / len(p) - overall).sum()
        for p in parts
    ]
    return float(np.mean(tvs))


@pytest.fixture(scope="module")
def digits():
    return tasks.load_task(load_config({}))


@pytest.fixture(scope="module")
def labels(digits):
    return digits.labels


@pytest.fixture(scope="module")
def groups():
    """40 synthetic groups of 1..30 examples each, interleaved in a shuffled pool."""
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 31, size=40)
    return rng.permutation(np.repeat(np.arange(40), sizes))


@pytest.fixture(scope="module")
def shakespeare():
    if not CORPUS.is_file():
        pytest.skip(f"tiny Shakespeare corpus not found at {CORPUS}")
    return tasks.load_task(load_config({"task.name": "shakespeare", "data.path": str(CORPUS)}))


def test_digits_pool_size(labels):
    assert len(labels) == DIGITS_TRAIN == 1438


# ----------------------------------------------------------------------- disjoint + cover
@pytest.mark.parametrize("num_partitions", [3, 10])
@pytest.mark.parametrize("scheme, kwargs", [("iid", {}), ("dirichlet", {"alpha": 0.5})])
def test_label_schemes_are_disjoint_and_cover_the_pool(labels, scheme, kwargs, num_partitions):
    parts = all_parts(scheme, num_partitions, labels, **kwargs)
    joined = assert_disjoint(parts, len(labels))
    assert sum(len(p) for p in parts) == len(labels)
    assert np.array_equal(np.sort(joined), np.arange(len(labels)))


@pytest.mark.parametrize("num_partitions", [3, 7])
def test_natural_is_disjoint_and_covers_the_pool(groups, num_partitions):
    labels = np.zeros(len(groups), dtype=np.int64)
    parts = all_parts("natural", num_partitions, labels, groups)
    assert_disjoint(parts, len(groups))
    assert sum(len(p) for p in parts) == len(groups)
    assert min(len(p) for p in parts) > 0


@ignore_unused_classes
@pytest.mark.parametrize("num_partitions", [4, 10])
def test_classes_gives_each_client_exactly_its_classes(labels, num_partitions):
    parts = all_parts("classes", num_partitions, labels, classes_per_client=2, seed=0)
    assert_disjoint(parts, len(labels))
    held = [set(np.unique(labels[p]).tolist()) for p in parts]
    assert [len(h) for h in held] == [2] * num_partitions
    # first-deterministic: client i's first class is class i (mod 10)
    assert all(pid % 10 in h for pid, h in enumerate(held))
    assigned = sorted(set().union(*held))
    expected = np.flatnonzero(np.isin(labels, assigned))
    assert np.array_equal(np.sort(np.concatenate(parts)), expected)
    if num_partitions == 10:  # every class is some client's first class
        assert len(expected) == len(labels)
    else:  # 4 clients draw at most 8 of the 10 classes
        assert len(assigned) <= 8 and len(expected) < len(labels)


# ----------------------------------------------------------------------- determinism
@ignore_unused_classes
@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "classes"])
def test_same_seed_same_indices_other_seed_other_indices(labels, scheme):
    kwargs = {"alpha": 0.5, "classes_per_client": 2}
    first = all_parts(scheme, 5, labels, seed=3, **kwargs)
    again = all_parts(scheme, 5, labels, seed=3, **kwargs)
    other = all_parts(scheme, 5, labels, seed=4, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_natural_is_deterministic(groups):
    labels = np.zeros(len(groups), dtype=np.int64)
    a = all_parts("natural", 5, labels, groups, seed=1)
    b = all_parts("natural", 5, labels, groups, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


# ----------------------------------------------------------------------- Dirichlet skew
@pytest.mark.slow
def test_dirichlet_skew_grows_as_alpha_falls(labels):
    """Mean TV distance to the global label mix, 10 clients, averaged over seeds 0..2.
    Measured: about 0.036 (alpha=100), 0.33 (alpha=1), 0.69 (alpha=0.1)."""
    skew = {}
    for alpha in (100.0, 1.0, 0.1):
        per_seed = [
            mean_tv_to_global(all_parts("dirichlet", 10, labels, alpha=alpha, seed=seed), labels)
            for seed in range(3)
        ]
        skew[alpha] = np.mean(per_seed)
    assert skew[100.0] < 0.06  # nearly the global mix: the split is close to IID
    assert skew[1.0] > skew[100.0] + 0.1
    assert skew[0.1] > skew[1.0] + 0.1
    assert skew[0.1] > 0.5  # most clients are dominated by a few classes


def test_dirichlet_respects_min_partition_size(labels):
    parts = all_parts("dirichlet", 10, labels, alpha=0.1, min_partition_size=10, seed=0)
    assert min(len(p) for p in parts) >= 10


# ----------------------------------------------------------------------- iid sizes
@pytest.mark.parametrize("num_partitions", [3, 7, 10, 13])
def test_iid_sizes_differ_by_at_most_one(labels, num_partitions):
    sizes = [len(p) for p in all_parts("iid", num_partitions, labels, seed=0)]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == len(labels)


def test_iid_label_mix_matches_the_pool(labels):
    """Shuffled before cutting: contiguous shards of a sorted pool would be one class each."""
    sorted_labels = np.sort(labels)
    parts = all_parts("iid", 5, sorted_labels, seed=0)
    assert mean_tv_to_global(parts, sorted_labels) < 0.1


# ----------------------------------------------------------------------- natural
@pytest.mark.parametrize("num_partitions", [3, 7])
def test_natural_puts_every_group_wholly_in_one_client(groups, num_partitions):
    labels = np.zeros(len(groups), dtype=np.int64)
    parts = all_parts("natural", num_partitions, labels, groups, seed=0)
    owners = {}
    for pid, part in enumerate(parts):
        for group in np.unique(groups[part]):
            assert group not in owners, f"group {group} in clients {owners[group]} and {pid}"
            owners[group] = pid
            # the whole group, not part of it
            assert np.isin(np.flatnonzero(groups == group), part).all()
    assert sorted(owners) == list(range(40))
    # and client pid is the client assign_roles_to_clients picked (ids are mapped back)
    expected = assign_roles_to_clients(np.bincount(groups), num_partitions, 0)
    assert all(owners[g] == expected[g] for g in owners)


@pytest.mark.slow
def test_natural_on_shakespeare_roles(shakespeare):
    roles = shakespeare.groups
    parts = all_parts("natural", 10, shakespeare.labels, roles, seed=0)
    assert_disjoint(parts, len(roles))
    assert sum(len(p) for p in parts) == len(roles)
    role_sets = [set(np.unique(roles[p]).tolist()) for p in parts]
    for i in range(10):
        for j in range(i + 1, 10):
            assert not role_sets[i] & role_sets[j]
    assert set().union(*role_sets) == set(range(roles.max() + 1))
    for part, held in zip(parts, role_sets):
        assert len(part) == np.isin(roles, list(held)).sum()
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= np.bincount(roles).max()  # LPT balance guarantee
    assert max(sizes) - min(sizes) <= 0.01 * np.mean(sizes)  # measured: 994 vs 993


# ----------------------------------------------------------------------- errors
@pytest.mark.parametrize("partition_id", [-1, 5, 6])
def test_partition_id_out_of_range(labels, partition_id):
    with pytest.raises(ValueError, match="partition-id"):
        partition_indices("iid", 5, partition_id, labels)


def test_too_many_classes_per_client(labels):
    with pytest.raises(ValueError, match="classes_per_client = 11.*only 10 classes"):
        partition_indices("classes", 4, 0, labels, classes_per_client=11)


def test_more_clients_than_examples():
    with pytest.raises(ValueError, match="6 clients but only 5 training examples"):
        partition_indices("iid", 6, 0, np.array([0, 1, 0, 1, 0]))


def test_unknown_scheme_and_natural_without_groups(labels):
    with pytest.raises(ValueError, match="Unknown partition scheme"):
        partition_indices("shards", 3, 0, labels)
    with pytest.raises(ValueError, match="natural groups"):
        partition_indices("natural", 3, 0, labels)


@pytest.mark.filterwarnings("ignore:The specified min_partition_size")
def test_dirichlet_failure_is_a_value_error():
    """Ten examples cannot give 5 clients at least 10 each."""
    with pytest.raises(ValueError, match="Cannot split the data 'dirichlet' into 5 parts"):
        partition_indices("dirichlet", 5, 0, np.arange(10) % 2, min_partition_size=10)


# ----------------------------------------------------------------------- client_split
def test_client_split_is_the_partition_of_the_training_pool(digits):
    cfg = load_config({})  # dirichlet, alpha 0.5, min size 10, seed 0
    splits = [tasks.client_split(cfg, pid, 5) for pid in range(5)]
    assert sum(len(s) for s in splits) == len(digits.train)
    for pid, split in enumerate(splits):
        index = partition_indices("dirichlet", 5, pid, digits.labels, alpha=0.5,
                                  min_partition_size=10, seed=0)
        assert torch.equal(split.x, digits.train.x[index])
        assert torch.equal(split.y, digits.train.y[index])
        assert np.array_equal(split.y.numpy(), digits.labels[index])


def test_client_split_follows_the_config():
    iid = load_config({"data.partition": "iid"})
    sizes = [len(tasks.client_split(iid, pid, 7)) for pid in range(7)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == DIGITS_TRAIN
    a = tasks.client_split(load_config({"data.alpha": 0.5}), 0, 5)
    b = tasks.client_split(load_config({"data.alpha": 0.1}), 0, 5)
    assert len(a) != len(b) or not torch.equal(a.y, b.y)
    with pytest.raises(ValueError, match="partition-id"):
        tasks.client_split(iid, 7, 7)


def test_min_partition_size_above_the_pool_share_names_the_cause(labels):
    """1438 examples cannot give 4 clients 500 each: say so, not 'update alpha'."""
    with pytest.raises(ValueError) as err:
        partition_indices("dirichlet", 4, 0, labels, min_partition_size=500)
    message = str(err.value)
    assert "data.min_partition_size = 500" in message and "1438" in message
    assert "4 partitions" in message and "at most 359" in message
    assert "alpha" not in message


@pytest.mark.filterwarnings("ignore:The specified min_partition_size")
def test_min_partition_size_that_dirichlet_draws_miss_names_the_cause(labels):
    """Possible on average (4 x 350 <= 1438) but Dirichlet(0.5) draws never meet it."""
    with pytest.raises(ValueError) as err:
        partition_indices("dirichlet", 4, 0, labels, alpha=0.5, min_partition_size=350)
    message = str(err.value)
    assert "data.min_partition_size = 350" in message and "1438" in message
    assert "4 partitions" in message and "lower data.min_partition_size" in message
