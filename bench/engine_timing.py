"""The one-process engine (``engine.run``: no Flower) timed round by round: the
benchmark's "engine" system, for the FedAvg, clipped-FedAvg and Gossip-PGA workloads.

Start-up is building the task's data, every client's split and the model
(``tasks.federation``, whose results the engine then finds cached); a round ends in the
engine's ``on_round`` callback, after the round's training, server step and (with
``--evaluate``) the global model's test metrics, as fedlocal's ServerApp evaluates after
every round. Run as a subprocess by ``bench.run`` so that its memory is measured alone::

    python -m bench.engine_timing --clients 10 --rounds 5 --evaluate \\
        --overrides '{"task.name": "fmnist", "strategy.weighting": "examples"}' --out a.json
"""

from __future__ import annotations

import argparse
import json
import time


def timed_run(overrides: dict, clients: int, rounds: int, evaluate: bool = True,
              threads: int = 1) -> dict:
    """``rounds`` rounds of the configured algorithm on ``clients`` clients, timed."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    import engine
    import tasks
    from algorithms.settings import round_settings
    from conf import load_config

    start = time.perf_counter()
    cfg = load_config(overrides)
    _, _, splits, _ = tasks.federation(cfg, clients)
    marks = [time.perf_counter()]  # start-up ends
    run = engine.run(cfg, clients, rounds, evaluate_every=1 if evaluate else 0,
                     on_round=lambda record: marks.append(time.perf_counter()))
    sampled = engine.sampled_clients(cfg, clients, rounds)
    per_round = []
    for r, (record, chosen) in enumerate(zip(run.records, sampled, strict=False), start=1):
        settings = round_settings(cfg, r)
        per_round.append({
            "round": r,
            "seconds": marks[r] - marks[r - 1],
            "train_seconds": record["seconds"],  # training and server step, without evaluation
            "examples": sum(len(splits[i]) for i in chosen),
            # mini-batch rows processed (steps x batch size)
            "rows": sum(settings.steps(len(splits[i])) * min(settings.batch_size, len(splits[i]))
                        for i in chosen),
            "clients": len(chosen),
            "test_accuracy": record.get("test_accuracy"),
            "test_loss": record.get("test_loss"),
        })
    last = run.records[-1] if run.records else {}
    return {
        "startup": marks[0] - start,
        "round_seconds": [b - a for a, b in zip(marks, marks[1:])],
        "rounds": per_round,
        "records": run.records,
        "final_train_loss": last.get("train_loss"),
        "final_test_accuracy": last.get("test_accuracy"),
        "final_test_loss": last.get("test_loss"),
        "torch_threads": torch.get_num_threads(),
        "device": str(tasks.pick_device(cfg.train.device)),
        "wall": time.perf_counter() - start,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--evaluate", action="store_true",
                        help="test the global model after every round (as the ServerApp does)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0 = torch's default); Flower gives each simulated "
                        "client 1 CPU, and on a busy 2-core host 2 threads can be 100x slower")
    parser.add_argument("--overrides", default="{}", help="fedlocal config overrides as JSON")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = timed_run(json.loads(args.overrides), args.clients, args.rounds, args.evaluate,
                       args.threads)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, default=float)


if __name__ == "__main__":
    main()
