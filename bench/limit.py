"""The machine's limit for a server-centred workload (the benchmark's ``limit`` system):
fedlocal's own SGD steps with each round's sampled clients spread over as many
long-lived worker processes as the machine has cores, one torch thread each.

It is the physical anchor the other systems are held against: nothing in a round but
the clients' training, handing the model out and the rows back through shared memory,
the server's step and the central evaluation. Every number is computed by the same
functions the engine (``engine.run``) and the Flower strategy call: the client half
``algorithms.get(strategy.name).client_update`` (the one training loop) with
``algorithms.settings.round_settings(cfg, r)``, the splits ``tasks.client_split``, the
batch seeds ``client.train.round_seed(run.seed, client, round)``, the clients of each
round ``algorithms.base.sampled_clients`` (the strategy's rule) and the server half
``algorithms.base.server_step`` with the configured aggregator. So its model equals the
engine's (tests/test_bench_limit.py).

Each round the main process writes the global model (float32) into a shared tensor,
sends every worker its share of the round's clients (balanced by local steps, the
longest first), each worker trains its clients one after the other from that model and
writes each client's trained model into its row of a shared (clients x parameters)
tensor; the main process drops rows that are not finite, takes the server step and
evaluates the new model on the test set with one torch thread (the workers are idle
then). The main process builds every client's split once (``tasks.federation``) and
shares them end to end in one tensor; the workers start once, before round 1, and build
the model and loss from the config (start-up, not in any round). Not supported,
refused: decentralized algorithms (Gossip-PGA), simulated attacks and momentum kept
across rounds (a client may land on another worker next round). Training is always on
the CPU (the workers' models stay there whatever ``train.device`` says).

    python -m bench.limit --clients 10 --rounds 5 --evaluate \\
        --overrides '{"task.name": "fmnist", "strategy.weighting": "examples"}' --out a.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field


@dataclass
class LimitRun:
    """What ``run`` produced: per-round records, the final global model, start-up
    seconds (until every worker was ready) and each round's seconds."""

    records: list[dict] = field(default_factory=list)
    state: dict = field(default_factory=dict)
    startup: float = 0.0
    round_seconds: list[float] = field(default_factory=list)
    processes: int = 0


def check(cfg) -> None:
    """Refuse what the limit does not model (ValueError naming the key)."""
    import algorithms

    if algorithms.get(cfg.strategy.name).decentralized:
        raise ValueError(f"bench.limit runs server-centred algorithms; strategy.name="
                         f"{cfg.strategy.name!r} is decentralized.")
    if cfg.attack.kind != "none":
        raise ValueError("bench.limit does not simulate attacks (attack.kind must be 'none').")
    if cfg.train.persist_optimizer_state:
        raise ValueError("bench.limit does not keep momentum across rounds "
                         "(train.persist_optimizer_state must be false).")


def assign(costs: dict[int, int], workers: int) -> list[list[int]]:
    """The round's clients (client -> cost) over ``workers``: the costliest first, each to
    the least-loaded worker (ties: the lower worker). Each worker's list is sorted."""
    loads, shares = [0] * workers, [[] for _ in range(workers)]
    for client in sorted(costs, key=lambda c: (-costs[c], c)):
        k = min(range(workers), key=lambda w: (loads[w], w))
        loads[k] += costs[client]
        shares[k].append(client)
    return [sorted(share) for share in shares]


def _serve(conn, overrides: dict, xs, ys, bounds: list[int], model_vec, rows) -> None:
    """A worker: rebuild the clients' splits as views of the shared ``xs``/``ys`` (client i
    is rows ``bounds[i]:bounds[i + 1]``) and the model from the config, then train the
    clients each message names from the model in ``model_vec`` and write their models
    into ``rows``."""
    import torch

    torch.set_num_threads(1)
    import algorithms
    import tasks
    from algorithms.base import reply_metrics
    from algorithms.settings import round_settings
    from client.train import round_seed
    from conf import load_config
    from tasks.base import Split

    cfg = load_config(overrides)
    spec = tasks.task_spec(cfg)
    loss_fn, model = tasks.make_loss(cfg, spec), tasks.make_model(cfg, spec)
    splits = [Split(xs[a:b], ys[a:b]) for a, b in zip(bounds, bounds[1:])]
    algorithm = algorithms.get(cfg.strategy.name)(cfg, num_nodes=len(splits))
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    conn.send("ready")
    while True:
        message = conn.recv()
        if message is None:
            break
        r, jobs = message  # jobs: [(row, client), ...]
        settings = round_settings(cfg, r)
        start = [v.view_as(p) for v, p in zip(model_vec.split(sizes), params, strict=True)]
        replies = []
        for row, i in jobs:
            with torch.no_grad():
                for p, x in zip(params, start, strict=True):
                    p.copy_(x)
            update = algorithm.client_update(model, splits[i], loss_fn, settings,
                                             seed=round_seed(cfg.run.seed, i, r))
            with torch.no_grad():
                torch.cat([update.arrays[n].detach().reshape(-1) for n in names], out=rows[row])
            replies.append((row, reply_metrics(update.result, settings)))
        conn.send(replies)
    conn.close()


def run(overrides: dict, num_clients: int, rounds: int, processes: int | None = None,
        evaluate: bool = True, on_round=None) -> LimitRun:
    """``rounds`` rounds of ``strategy.name`` on ``num_clients`` clients over ``processes``
    workers (default: one per core). ``on_round(record)`` after each round."""
    import numpy as np
    import torch
    import torch.multiprocessing as mp

    import algorithms
    import engine
    import tasks
    from algorithms.base import sampled_clients, server_step
    from algorithms.settings import round_settings
    from client import protocol as P
    from conf import load_config
    from results import metrics as M
    from strategies import build_aggregator
    from strategies.replies import ArraySpec, Reply, flat, weighted_metrics

    begun = time.perf_counter()
    cfg = load_config(overrides)
    check(cfg)
    processes = processes or os.cpu_count() or 1
    data, loss_fn, splits, model = tasks.federation(cfg, num_clients)
    algorithm = algorithms.get(cfg.strategy.name)(cfg, num_nodes=num_clients)
    aggregator = build_aggregator(cfg)
    weights = engine.client_weights(cfg, splits, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    specs = [ArraySpec(n, tuple(p.shape), np.dtype(np.float32)) for n, p in zip(names, params, strict=True)]
    schedule = sampled_clients(cfg, num_clients, rounds)
    size = sum(p.numel() for p in params)
    model_vec = torch.zeros(size).share_memory_()
    rows = torch.zeros(max(len(c) for c in schedule), size).share_memory_()
    # every client's split, end to end in one shared tensor each for x and y
    xs = torch.cat([s.x for s in splits]).share_memory_()
    ys = torch.cat([s.y for s in splits]).share_memory_()
    bounds = np.concatenate([[0], np.cumsum([len(s) for s in splits])]).tolist()
    ctx = mp.get_context("spawn")
    workers, pipes = [], []
    out = LimitRun(processes=processes)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server's step and the evaluation: the workers wait then
    try:
        for _ in range(processes):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(there, overrides, xs, ys, bounds, model_vec, rows),
                               daemon=True)
            proc.start()
            workers.append(proc)
            pipes.append(here)
        for pipe in pipes:
            try:
                pipe.recv()
            except EOFError:
                raise RuntimeError("a bench.limit worker failed to start (a script that calls "
                                   "bench.limit.run must guard its main code with "
                                   "`if __name__ == '__main__'`: workers are spawned)") from None
        out.startup = time.perf_counter() - begun
        for r, clients in enumerate(schedule, start=1):
            started = time.perf_counter()
            settings = round_settings(cfg, r)
            with torch.no_grad():
                torch.cat([p.detach().reshape(-1) for p in params], out=model_vec)
            slot = {client: k for k, client in enumerate(clients)}
            shares = assign({i: settings.steps(len(splits[i])) for i in clients}, processes)
            for pipe, share in zip(pipes, shares, strict=True):
                pipe.send((r, [(slot[i], i) for i in share]))
            replies: dict[int, dict] = {}
            for pipe in pipes:
                replies.update(pipe.recv())
            x = flat({n: p.detach().numpy() for n, p in zip(names, params, strict=True)})
            got = rows[: len(clients)].numpy()
            kept = np.flatnonzero(np.isfinite(got).all(axis=1)).tolist()
            record = {M.ROUND: r, M.NUM_REPLIES: len(kept), M.AGGREGATE_REJECTED: 1}
            if kept:
                w = weights[[clients[k] for k in kept]]
                block = got if len(kept) == len(clients) else got[kept]  # no copy when all are sound
                step = server_step(algorithm, aggregator, x, block.astype(np.float64), w,
                                   [clients[k] for k in kept], settings, specs)
                metrics = weighted_metrics([Reply({}, replies[k]) for k in kept], list(w),
                                           P.MAX_METRICS)
                record.update({key: float(v) for key, v in {**metrics, **step.metrics}.items()})
                if step.arrays is not None:
                    with torch.no_grad():
                        for p, name in zip(params, names, strict=True):
                            p.copy_(torch.as_tensor(step.arrays[name]))
            record[M.SECONDS] = time.perf_counter() - started  # training and server step
            if evaluate:
                test = tasks.evaluate(model, data.test, loss_fn, data.kind, cfg.eval.batch_size)
                record.update({M.TEST_PREFIX + k: v for k, v in test.items()})
            out.round_seconds.append(time.perf_counter() - started)
            out.records.append(record)
            if on_round is not None:
                on_round(record)
    finally:
        for pipe in pipes:
            try:
                pipe.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in workers:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        torch.set_num_threads(threads)
    out.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out


def timed_run(overrides: dict, clients: int, rounds: int, evaluate: bool = True,
              processes: int | None = None) -> dict:
    """``run``, as the JSON ``bench.systems.run_limit`` reads (the shape of
    ``bench.engine_timing``'s)."""
    import tasks
    from algorithms.base import sampled_clients
    from algorithms.settings import round_settings
    from conf import load_config

    start = time.perf_counter()
    result = run(overrides, clients, rounds, processes, evaluate)
    cfg = load_config(overrides)
    sizes = [len(tasks.client_split(cfg, i, clients)) for i in range(clients)]
    per_round = []
    for r, (record, chosen) in enumerate(zip(result.records, sampled_clients(cfg, clients, rounds),
                                             strict=True), start=1):
        settings = round_settings(cfg, r)
        per_round.append({
            "round": r, "seconds": result.round_seconds[r - 1], "train_seconds": record["seconds"],
            "examples": sum(sizes[i] for i in chosen),
            "rows": sum(settings.steps(sizes[i]) * min(settings.batch_size, sizes[i]) for i in chosen),
            "clients": len(chosen), "test_accuracy": record.get("test_accuracy"),
            "test_loss": record.get("test_loss"),
        })
    last = result.records[-1] if result.records else {}
    return {
        "startup": result.startup,
        "round_seconds": result.round_seconds,
        "rounds": per_round,
        "records": result.records,
        "final_train_loss": last.get("train_loss"),
        "final_test_accuracy": last.get("test_accuracy"),
        "final_test_loss": last.get("test_loss"),
        "processes": result.processes,
        "torch_threads": 1,
        "device": "cpu",
        "wall": time.perf_counter() - start,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--evaluate", action="store_true",
                        help="test the global model after every round (as the ServerApp does)")
    parser.add_argument("--processes", type=int, default=0,
                        help="worker processes (default 0: one per core)")
    parser.add_argument("--overrides", default="{}", help="fedlocal config overrides as JSON")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = timed_run(json.loads(args.overrides), args.clients, args.rounds, args.evaluate,
                       args.processes or None)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, default=float)


if __name__ == "__main__":
    main()
