"""What a per-round checkpoint costs the server, for each benchmark workload of bench.run:
the file's bytes and the seconds to write it (torch.save to a temporary file, fsync,
rename; ``server.checkpoint.save_checkpoint``), with the state a run holds after a round
(the global model; Gossip-PGA's node models; naive clipping's momentum; one round of
records). The median of ``--repeats`` writes, on this machine's disk.

    python -m bench.checkpoint_cost [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
from flwr.app import ConfigRecord

from bench.run import CLIPPED_SHAKESPEARE, FEDAVG_FMNIST, GOSSIP_DIGITS, GOSSIP_NODES
from conf import load_config
from server.checkpoint import checkpoint_state, checkpoints, save_checkpoint

WORKLOADS = {  # name -> (overrides, nodes)
    "fedavg-fmnist": (FEDAVG_FMNIST, 10),
    "scaling-fmnist": (FEDAVG_FMNIST, 10),
    "gossip-digits": (GOSSIP_DIGITS, GOSSIP_NODES),
    "clipped-shakespeare": (CLIPPED_SHAKESPEARE, 8),
}


def state_after_a_round(overrides: dict, nodes: int) -> dict:
    import tasks
    from strategies import build_strategy

    cfg = load_config(overrides)
    spec = tasks.task_spec(cfg)
    model = tasks.make_model(cfg, spec)
    gossip = cfg.strategy.name == "gossip_pga"
    strategy = build_strategy(cfg, ConfigRecord({}), num_nodes=nodes if gossip else None)
    if gossip:
        d = sum(p.numel() for p in model.state_dict().values())
        strategy.X = np.zeros((nodes, d), np.float32)
        strategy.layout = {k: (tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()}
    record = {"round": 1, "seconds": 1.0, "train_loss": 1.0, "test_loss": 1.0, "test_accuracy": 0.5}
    strategy.round_metrics = {1: dict(record)}
    return checkpoint_state(1, model.state_dict(), strategy, [record], record, 1.0)


def measure(name: str, repeats: int) -> dict:
    overrides, nodes = WORKLOADS[name]
    state = state_after_a_round(overrides, nodes)
    seconds = []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(1, repeats + 1):
            start = time.perf_counter()
            save_checkpoint(folder, r, state, keep=1)
            seconds.append(time.perf_counter() - start)
        size = checkpoints(folder)[-1].stat().st_size
    model_bytes = sum(v.numel() * v.element_size() for v in state["model"].values())
    return {"workload": name, "checkpoint_bytes": size, "model_bytes": model_bytes,
            "seconds_median": statistics.median(seconds), "seconds_max": max(seconds)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = [measure(name, args.repeats) for name in WORKLOADS]
    print("| workload | checkpoint bytes | model bytes | seconds per checkpoint (median, max) |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['workload']} | {row['checkpoint_bytes']:,} | {row['model_bytes']:,} | "
              f"{row['seconds_median'] * 1e3:.1f} ms, {row['seconds_max'] * 1e3:.1f} ms |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
