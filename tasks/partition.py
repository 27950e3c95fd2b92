"""Split a training pool over clients with flwr-datasets' partitioners.

The partitioners run on a tiny local ``datasets.Dataset`` holding only the example index,
its label and its natural group, so the images or sequences themselves are never copied:
a partition comes back as an index array into the task's tensors.
"""

from __future__ import annotations

import warnings

import numpy as np

SCHEMES = ("iid", "dirichlet", "classes", "natural")


def _natural_clients(groups: np.ndarray, num_partitions: int, seed: int) -> np.ndarray:
    """Client id of every example: its group (speaking role) assigned to a client so the
    clients' sample counts are balanced. Deterministic given ``seed``."""
    from tasks.shakespeare import assign_roles_to_clients

    sizes = np.bincount(groups)
    client_of_group = assign_roles_to_clients(sizes, num_partitions, seed)
    return client_of_group[groups]


def check_partition_id(partition_id: int, num_partitions: int) -> None:
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id {partition_id} is outside 0..{num_partitions - 1} (num-partitions)."
        )


def partition_all(
    scheme: str,
    num_partitions: int,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    min_partition_size: int = 10,
    seed: int = 0,
) -> list[np.ndarray]:
    """The sorted training-example indices of every client, ``[client 0, client 1, ...]``.
    One partitioner is built for all clients (building one costs ~0.5 s on 60k examples)."""
    from datasets import Dataset
    from flwr_datasets import partitioner as fp

    if num_partitions > len(labels):
        raise ValueError(
            f"{num_partitions} clients but only {len(labels)} training examples; use fewer clients."
        )
    columns = {"idx": np.arange(len(labels)), "label": np.asarray(labels)}
    if scheme == "iid":
        # IidPartitioner cuts contiguous shards: shuffle the pool first, by seed.
        columns["idx"] = np.random.default_rng(seed).permutation(len(labels))
        part = fp.IidPartitioner(num_partitions)
    elif scheme == "dirichlet":
        _check_min_partition_size(min_partition_size, num_partitions, len(labels), scheme)
        part = fp.DirichletPartitioner(
            num_partitions, "label", alpha, min_partition_size=min_partition_size,
            self_balancing=False, shuffle=True, seed=seed,
        )
    elif scheme == "classes":
        num_classes = len(np.unique(labels))
        if classes_per_client > num_classes:
            raise ValueError(
                f"data.classes_per_client = {classes_per_client} but the task has only "
                f"{num_classes} classes."
            )
        part = fp.PathologicalPartitioner(
            num_partitions, "label", classes_per_client,
            class_assignment_mode="first-deterministic", shuffle=True, seed=seed,
        )
    elif scheme == "natural":
        if groups is None:
            raise ValueError("data.partition = 'natural' needs a task with natural groups.")
        columns["client"] = _natural_clients(np.asarray(groups), num_partitions, seed)
        part = fp.NaturalIdPartitioner("client")
    else:
        raise ValueError(f"Unknown partition scheme {scheme!r}; choose one of {SCHEMES}.")
    part.dataset = Dataset.from_dict(columns)
    order = list(range(num_partitions))
    if scheme == "natural":
        if part.num_partitions != num_partitions:  # also builds the id mapping
            raise ValueError(f"{part.num_partitions} natural groups for {num_partitions} clients.")
        # NaturalIdPartitioner numbers its partitions itself (sorted ids in flwr-datasets
        # 0.6); map client id -> partition id explicitly rather than rely on that.
        position = {natural: p for p, natural in part.partition_id_to_natural_id.items()}
        order = [position[client] for client in range(num_partitions)]
    try:
        with warnings.catch_warnings():  # each failed draw warns "adjust the alpha"
            warnings.filterwarnings("ignore", "The specified min_partition_size")
            return [np.sort(np.asarray(part.load_partition(p)["idx"], dtype=np.int64)) for p in order]
    except ValueError as err:
        if scheme == "dirichlet" and "max number of attempts" in str(err):
            raise ValueError(
                f"Cannot split the data {scheme!r} into {num_partitions} parts: 11 Dirichlet("
                f"alpha = {alpha:g}) draws all left some of the {num_partitions} partitions "
                f"below data.min_partition_size = {min_partition_size} examples (the training "
                f"pool has {len(labels)}, {len(labels) // num_partitions} per partition on "
                "average): lower data.min_partition_size, raise data.alpha (less skew) or use "
                "fewer clients."
            ) from err
        raise ValueError(f"Cannot split the data {scheme!r} into {num_partitions} parts: {err}") from err


def _check_min_partition_size(min_size: int, num_partitions: int, pool: int, scheme: str) -> None:
    """A Dirichlet split cannot give every partition ``min_size`` examples from a pool
    smaller than ``min_size x num_partitions``, whatever alpha is."""
    if min_size * num_partitions > pool:
        raise ValueError(
            f"Cannot split the data {scheme!r} into {num_partitions} parts: "
            f"data.min_partition_size = {min_size} asks for at least {min_size} examples in "
            f"each of {num_partitions} partitions ({min_size * num_partitions} in all), but "
            f"the training pool has {pool}. Lower data.min_partition_size to at most "
            f"{pool // num_partitions}, use fewer clients (SuperNodes) or keep more training "
            "data (data.max_train = 0 keeps all)."
        )


def partition_indices(
    scheme: str,
    num_partitions: int,
    partition_id: int,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    **options,
) -> np.ndarray:
    """Indices of the training examples that belong to client ``partition_id``."""
    check_partition_id(partition_id, num_partitions)
    return partition_all(scheme, num_partitions, labels, groups, **options)[partition_id]
