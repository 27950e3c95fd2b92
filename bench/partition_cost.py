"""What a simulated client pays for its data split, today and with a shared assignment.

    python -m bench.partition_cost --clients 10 --partition dirichlet

``tasks.client_split`` builds a fresh flwr-datasets partitioner (over a fresh
``datasets.Dataset``) for every partition id it is asked for, and every partitioner
computes the assignment of *all* partitions before returning one. A Ray worker that
serves k different clients therefore repeats the whole computation k times. This
prints the seconds for every client's split through ``tasks.client_split`` (a cold
cache, as in a fresh simulation worker) next to computing the assignment once with one
partitioner and reading every partition from it.
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--partition", default="dirichlet", choices=("iid", "dirichlet"))
    parser.add_argument("--limit", type=int, default=20, help="time at most this many clients")
    args = parser.parse_args(argv)

    import numpy as np
    from datasets import Dataset
    from flwr_datasets import partitioner as fp

    import tasks
    from conf import load_config

    cfg = load_config({"task.name": "fmnist", "data.partition": args.partition})
    data = tasks.load_task(cfg)
    tasks.client_split(cfg, 0, args.clients)  # imports and first-call costs, not counted
    tasks._client_split.cache_clear()
    ids = list(range(min(args.clients, args.limit)))
    start = time.perf_counter()
    for i in ids:
        tasks.client_split(cfg, i, args.clients)
    per_client = (time.perf_counter() - start) / len(ids)

    start = time.perf_counter()
    if args.partition == "dirichlet":
        part = fp.DirichletPartitioner(args.clients, "label", cfg.data.alpha,
                                       min_partition_size=cfg.data.min_partition_size,
                                       self_balancing=False, shuffle=True, seed=cfg.run.seed)
        part.dataset = Dataset.from_dict({"idx": np.arange(len(data.labels)), "label": data.labels})
        parts = [np.asarray(part.load_partition(i)["idx"]) for i in ids]
    else:
        perm = np.random.default_rng(cfg.run.seed).permutation(len(data.labels))
        parts = np.array_split(perm, args.clients)[: len(ids)]
    splits = [data.train.subset(np.sort(p)) for p in parts]
    once = time.perf_counter() - start
    print(f"{args.partition}, {args.clients} clients: tasks.client_split {per_client:.3f} s per "
          f"client (x{len(ids)} = {per_client * len(ids):.2f} s); one shared assignment for the "
          f"same {len(splits)} splits: {once:.2f} s in all")


if __name__ == "__main__":
    main()
