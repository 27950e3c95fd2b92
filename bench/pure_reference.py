"""(a) Pure compute for the Gossip-PGA and clipped-FedAvg workloads: fedlocal's one-process
reference simulators (no Flower), timed per iteration / round.

``gossip``: ``strategies.gossip_reference.simulate(cfg, nodes, iterations)``: every
iteration every node runs ``client.train.local_train`` on its split with the ClientApp's
seeds, then ``mix_step`` applies W_k or the global mean (what the hosted strategy does).
It evaluates nothing (``evaluate_every=0``).

``fedavg``: ``strategies.fedavg_reference.simulate(cfg, clients, rounds,
evaluate_every=1)``: every round every client trains from the global model (clipped when
``strategy.name = clipped_fedavg``), the models are averaged, and the global model is
evaluated on the test set, as fedlocal's ServerApp does after every round.

These simulators are also the issue's "(d) reference simulator" row. Neither times its
iterations, so the times come from hooks: the end of start-up is when
``tasks.federation`` returns (data, splits, model built); an iteration ends when gossip's
``consensus_distance`` is computed (once per iteration, after the mixing) or, for FedAvg,
in the ``on_round`` callback. Run as a subprocess by ``bench.run``::

    python -m bench.pure_reference --kind gossip --clients 16 --rounds 30 \\
        --overrides '{"strategy.name": "gossip_pga"}' --out a.json
"""

from __future__ import annotations

import argparse
import json
import time


def run_reference(kind: str, overrides: dict, clients: int, rounds: int, threads: int = 1) -> dict:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    import tasks
    from conf import load_config

    start = time.perf_counter()
    cfg = load_config(overrides)
    marks: list[float] = []
    federation = tasks.federation

    def timed_federation(*a, **k):
        out = federation(*a, **k)
        marks.append(time.perf_counter())  # start-up ends, iteration 1 starts
        return out

    tasks.federation = timed_federation
    try:
        if kind == "gossip":
            import strategies.gossip_reference as ref

            distance = ref.consensus_distance

            def timed_distance(X):
                marks.append(time.perf_counter())  # called once per iteration, after mixing
                return distance(X)

            ref.consensus_distance = timed_distance
            try:
                run = ref.simulate(cfg, clients, rounds)
            finally:
                ref.consensus_distance = distance
            records = run.records
        else:
            from strategies.fedavg_reference import simulate

            records, _ = simulate(cfg, clients, rounds, evaluate_every=1,
                                  on_round=lambda record: marks.append(time.perf_counter()))
    finally:
        tasks.federation = federation
    seconds = [b - a for a, b in zip(marks, marks[1:])]
    last = records[-1] if records else {}
    return {
        "startup": marks[0] - start,
        "round_seconds": seconds,
        "records": records,
        "final_train_loss": last.get("train_loss"),
        "final_test_accuracy": last.get("test_accuracy"),
        "final_test_loss": last.get("test_loss"),
        "torch_threads": torch.get_num_threads(),
        "wall": time.perf_counter() - start,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("gossip", "fedavg"), required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = run_reference(args.kind, json.loads(args.overrides), args.clients, args.rounds,
                           args.threads)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, default=float)


if __name__ == "__main__":
    main()
