"""(a) Pure compute: FedAvg by hand in one process, no Flower.

For every round and every sampled client: load the global weights, run
``client.train.local_train`` on ``tasks.client_split(cfg, i, n)`` with exactly the
settings and seeds the ClientApp uses (``round_seed(run.seed, client, round)``), then
take the example-weighted mean of the client models (what Flower's FedAvg computes) and
evaluate it on the server's test set, as fedlocal's ServerApp does after every round::

    x <- sum_k (n_k / n) x_k

Run as a subprocess by ``bench.run`` so that its memory is measured alone::

    python -m bench.pure --clients 10 --rounds 5 --overrides '{"task.name": "fmnist"}' --out a.json
"""

from __future__ import annotations

import argparse
import json
import random
import time


def sampled_clients(num_clients: int, fraction: float, min_nodes: int, rounds: int,
                    seed: int) -> list[list[int]]:
    """Clients trained in each round: all of them, or Flower's rule
    ``max(int(n * fraction), min_nodes)`` drawn at random (seeded here)."""
    if fraction >= 1.0:
        return [list(range(num_clients))] * rounds
    size = min(num_clients, max(int(num_clients * fraction), min_nodes))
    rng = random.Random(seed)
    return [sorted(rng.sample(range(num_clients), size)) for _ in range(rounds)]


def fedavg_by_hand(overrides: dict, num_clients: int, rounds: int, fraction: float = 1.0,
                   min_nodes: int = 2, threads: int = 1) -> dict:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    import tasks
    from client.train import local_train, round_seed, steps_for
    from conf import load_config

    start = time.perf_counter()
    cfg = load_config(overrides)
    t = cfg.train
    data = tasks.load_task(cfg)
    device = tasks.pick_device(t.device)
    model = tasks.make_model(cfg, data).to(device)
    loss_fn = tasks.make_loss(cfg, data)
    schedule = sampled_clients(num_clients, fraction, min_nodes, rounds, cfg.run.seed)
    # Every split the rounds will need, made before the clock starts (start-up).
    splits = {i: tasks.client_split(cfg, i, num_clients) for i in sorted(set(sum(schedule, [])))}
    tasks.evaluate(model, data.test, loss_fn, data.kind, cfg.eval.batch_size)  # round 0
    startup = time.perf_counter() - start

    records = []
    for server_round, clients in enumerate(schedule, start=1):
        round_start = time.perf_counter()
        global_state = {k: v.clone() for k, v in model.state_dict().items()}
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_state.items()}
        examples = rows = 0
        for i in clients:
            split = splits[i]
            model.load_state_dict(global_state)
            result = local_train(
                model, split, loss_fn,
                steps=steps_for(len(split), t.batch_size, t.local_steps, t.local_epochs),
                batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
                weight_decay=t.weight_decay, seed=round_seed(cfg.run.seed, i, server_round),
            )
            for k, v in model.state_dict().items():
                total[k] += v.double() * result.examples
            examples += result.examples
            rows += result.steps * min(t.batch_size, len(split))
        model.load_state_dict({k: (v / examples).to(global_state[k].dtype) for k, v in total.items()})
        train_seconds = time.perf_counter() - round_start
        test = tasks.evaluate(model, data.test, loss_fn, data.kind, cfg.eval.batch_size)
        records.append({
            "round": server_round,
            "seconds": time.perf_counter() - round_start,
            "train_seconds": train_seconds,
            "examples": examples,
            "rows": rows,  # mini-batch rows processed (steps x batch size)
            "clients": len(clients),
            "test_accuracy": test.get("accuracy"),
            "test_loss": test["loss"],
        })
    return {
        "startup": startup,
        "rounds": records,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "wall": time.perf_counter() - start,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--min-nodes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0 = torch's default); Flower gives each simulated "
                        "client 1 CPU, and on a busy 2-core host 2 threads can be 100x slower")
    parser.add_argument("--overrides", default="{}", help="fedlocal config overrides as JSON")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = fedavg_by_hand(json.loads(args.overrides), args.clients, args.rounds,
                            args.fraction, args.min_nodes, args.threads)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
