"""The clipped-FedAvg row (workload ``clipped-shakespeare``): fedlocal's CELGC on tiny
Shakespeare against the same algorithm in its one-process engine.

    python -m bench.clipped_compare [--shakespeare-rounds 8] [--shakespeare PATH] [--deployment]

Clipped FedAvg (CELGC), character LSTM on tiny Shakespeare (``--shakespeare``; skipped if
absent), 8 IID clients, I = 4 local steps of batch 16, eta = 20, gamma = 5,
``--shakespeare-rounds`` rounds (8). ``engine``: fedlocal's one-process engine timed per
round (``bench.engine_timing``); ``simulation``: fedlocal in Flower's simulation engine;
with ``--deployment``, ``deployment_warm`` on 8 SuperNode processes. No target: the ratio
is reported.

Alone it writes ``bench/results/<timestamp>.json`` and ``.md`` as ``python -m bench.run
--workloads clipped-shakespeare`` does.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.common import REPO, log, with_device
from bench.report import (
    breakdown,
    deployment_lines,
    deployment_name,
    deployment_ratio,
    per_round_line,
    reference_rows,
)
from bench.systems import (
    deployment_available,
    deployment_rounds,
    run_deployment_warm,
    run_engine,
    run_fedlocal,
)

NAME = "clipped-shakespeare"
QUICK = "3 clipped rounds"
DEPLOYMENT = True  # takes --deployment
# Clipped FedAvg (CELGC) on tiny Shakespeare, character LSTM: docs/celgc.md's setting
# (eta = 20, gamma = 5, batch 16), 8 clients, I = 4 local steps, IID split.
CLIPPED_SHAKESPEARE = {"task.name": "shakespeare", "strategy.name": "clipped_fedavg",
                       "train.local_steps": 4, "train.local_epochs": 0, "data.partition": "iid",
                       "train.lr": 20.0, "strategy.clip_gamma": 5.0, "run.seed": 0}
SHAKESPEARE_CLIENTS = 8
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def add_arguments(parser) -> None:
    parser.add_argument("--shakespeare-rounds", type=int, default=None,
                        help="rounds of clipped-shakespeare (default 8; quick 3)")
    parser.add_argument("--shakespeare", default=str(SHAKESPEARE),
                        help="tiny-shakespeare input.txt for clipped-shakespeare (default "
                        "<repo>/../shared/data/tinyshakespeare/input.txt; skipped if absent)")


def finish_args(args, parser) -> None:
    args.shakespeare_rounds = args.shakespeare_rounds or (3 if args.quick else 8)
    if args.shakespeare_rounds < 2:
        parser.error("--shakespeare-rounds must be >= 2 (the first round is start-up)")


def run(args) -> dict:
    path = Path(args.shakespeare).expanduser()
    if not path.is_file():
        log(f"clipped-shakespeare: skipped, no tiny-shakespeare file at {path} (--shakespeare)")
        return {"skipped": f"no tiny-shakespeare file at {path}"}
    overrides = with_device(args, {**CLIPPED_SHAKESPEARE, "data.path": str(path.resolve())})
    rounds, clients = args.shakespeare_rounds, SHAKESPEARE_CLIENTS
    samples = clients * CLIPPED_SHAKESPEARE["train.local_steps"] * 16  # sequences; batch 16
    log(f"clipped-shakespeare: {clients} clients, I = 4, {rounds} rounds")
    result: dict = {"clients": clients, "rounds": rounds, "config": overrides,
                    "samples_per_round": samples, "systems": {}}
    systems = result["systems"]
    log("engine: fedlocal's one-process engine, no Flower")
    systems["engine"] = run_engine(overrides, clients, rounds, args.engine_threads,
                                   samples=samples)
    log(f"    median {systems['engine']['median']:.3f} s/round")
    log("simulation: fedlocal in Flower's simulation engine")
    systems["simulation"] = run_fedlocal(overrides, clients, rounds, samples, args.app_dir)
    log(f"    median {systems['simulation']['median']:.3f} s/round")
    if args.deployment and deployment_available():
        systems["deployment_warm"] = run_deployment_warm(
            args, overrides, clients, deployment_rounds(args, rounds), samples)
    engine = systems["engine"]["median"]
    result["ratios"] = {"simulation_over_engine": systems["simulation"]["median"] / engine}
    if "deployment_warm" in systems:
        result["ratios"]["deployment_warm_over_engine"] = systems["deployment_warm"]["median"] / engine
    return result


def markdown(report: dict, clipped: dict) -> list[str]:
    if "skipped" in clipped:
        return ["### clipped-shakespeare", "", f"Skipped: {clipped['skipped']}.", ""]
    return [
        f"### clipped-shakespeare: clipped FedAvg (CELGC), character LSTM on tiny Shakespeare, "
        f"{clipped['clients']} clients (IID), I = 4 local steps of batch 16, eta = 20, "
        f"gamma = 5, {clipped['rounds']} rounds",
        "",
        *reference_rows(clipped, {
            "engine": "engine: pure compute, no Flower",
            "simulation": "simulation: fedlocal, Flower's simulation engine",
            "deployment_warm": deployment_name(clipped)}, "round"),
        "",
        f"simulation/engine = **{clipped['ratios']['simulation_over_engine']:.2f}x** per round "
        "(no target in the issue). Both evaluate the global model on the test set after every "
        f"round. samples/s: {clipped['samples_per_round']} sequences of 80 characters per round "
        "(8 clients x 4 steps x batch 16) / median seconds. "
        + deployment_ratio(clipped, "round"),
        "",
        "Memory of simulation at its peak, by process (RSS MB): "
        + breakdown(clipped["systems"]["simulation"]) + ".",
        "",
        *deployment_lines(report, clipped),
        per_round_line(clipped, ["engine", "simulation", "deployment_warm"]),
        "",
    ]


def main(argv=None) -> int:
    from bench.run import main as run_main

    return run_main(argv, workload=NAME)


if __name__ == "__main__":
    sys.exit(main())
