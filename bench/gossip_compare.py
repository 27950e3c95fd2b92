"""The Gossip-PGA comparison (workload ``gossip-digits``): fedlocal's hosted Gossip-PGA
against the same algorithm in its one-process engine.

    python -m bench.gossip_compare [--gossip-rounds 30] [--deployment] [--quick]

Gossip-PGA on digits (ReLU MLP), 16 nodes on a ring, a global average every 4
iterations, 1 local step (batch 32) per iteration, ``--gossip-rounds`` iterations (30).
``engine``: fedlocal's one-process engine timed per iteration (``bench.engine_timing``),
training and mixing only (no evaluation); ``simulation``: fedlocal in Flower's simulation
engine with ``strategy.evaluate_nodes=false`` (the ratio), and ``simulation_eval_nodes``
with the default ``true`` (not with ``--quick``); with ``--deployment``,
``deployment_warm`` as ``simulation`` on 16 SuperNode processes. Target:
simulation/engine <= 3 per iteration.

Alone it writes ``bench/results/<timestamp>.json`` and ``.md`` as ``python -m bench.run
--workloads gossip-digits`` does.
"""

from __future__ import annotations

import sys

from bench.common import log, with_device
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

NAME = "gossip-digits"
QUICK = "8 gossip iterations without simulation_eval_nodes"
DEPLOYMENT = True  # takes --deployment
# Gossip-PGA on digits (the default task, ReLU MLP): 16 nodes on a ring, 1 local step per
# iteration, a global average every 4 iterations.
GOSSIP_DIGITS = {"task.name": "digits", "strategy.name": "gossip_pga", "strategy.topology": "ring",
                 "strategy.averaging": "periodic", "strategy.period": 4, "train.local_steps": 1,
                 "train.local_epochs": 0, "run.seed": 0}
GOSSIP_NODES = 16


def add_arguments(parser) -> None:
    parser.add_argument("--gossip-rounds", type=int, default=None,
                        help="iterations (= rounds) of gossip-digits (default 30; quick 8)")


def finish_args(args, parser) -> None:
    args.gossip_rounds = args.gossip_rounds or (8 if args.quick else 30)
    if args.gossip_rounds < 2:
        parser.error("--gossip-rounds must be >= 2 (the first round is start-up)")


def run(args) -> dict:
    rounds, nodes = args.gossip_rounds, GOSSIP_NODES
    config = with_device(args, GOSSIP_DIGITS)
    samples = nodes * config["train.local_steps"] * 32  # digits' batch size: 32
    log(f"gossip-digits: {nodes} nodes on a ring, {rounds} iterations, 1 local step each")
    result: dict = {"nodes": nodes, "rounds": rounds, "config": config,
                    "samples_per_round": samples, "systems": {}}
    systems = result["systems"]
    log("engine: fedlocal's one-process engine, no Flower, no evaluation")
    systems["engine"] = run_engine(config, nodes, rounds, args.engine_threads, evaluate=False,
                                   samples=samples)
    log(f"    median {systems['engine']['median']:.4f} s/iteration")
    log("simulation: fedlocal in Flower's simulation engine, strategy.evaluate_nodes=false")
    systems["simulation"] = run_fedlocal({**config, "strategy.evaluate_nodes": False}, nodes,
                                         rounds, samples, args.app_dir)
    log(f"    median {systems['simulation']['median']:.3f} s/iteration")
    if not args.quick:
        log("simulation_eval_nodes: the same, strategy.evaluate_nodes=true (the default)")
        systems["simulation_eval_nodes"] = run_fedlocal(
            {**config, "strategy.evaluate_nodes": True}, nodes, rounds, samples, args.app_dir)
        log(f"    median {systems['simulation_eval_nodes']['median']:.3f} s/iteration")
    if args.deployment and deployment_available():
        systems["deployment_warm"] = run_deployment_warm(
            args, {**config, "strategy.evaluate_nodes": False}, nodes,
            deployment_rounds(args, rounds), samples)
    engine = systems["engine"]["median"]
    result["ratios"] = {"simulation_over_engine": systems["simulation"]["median"] / engine}
    if "simulation_eval_nodes" in systems:
        result["ratios"]["simulation_eval_nodes_over_engine"] = (
            systems["simulation_eval_nodes"]["median"] / engine)
    if "deployment_warm" in systems:
        result["ratios"]["deployment_warm_over_engine"] = systems["deployment_warm"]["median"] / engine
    result["targets"] = {
        "simulation_within_3x_engine": result["ratios"]["simulation_over_engine"] <= 3.0}
    return result


def markdown(report: dict, gossip: dict) -> list[str]:
    r = gossip["ratios"]
    met = "met" if gossip["targets"]["simulation_within_3x_engine"] else "not met"
    return [
        f"### gossip-digits: Gossip-PGA, {gossip['nodes']} nodes on a ring, period 4, "
        f"1 local step (batch 32) per iteration, {gossip['rounds']} iterations, digits ReLU MLP",
        "",
        *reference_rows(gossip, {
            "engine": "engine: pure compute, no Flower",
            "simulation": "simulation: fedlocal, Flower's simulation engine, "
                          "`evaluate_nodes=false`",
            "simulation_eval_nodes": "simulation_eval_nodes: the same, `evaluate_nodes=true` "
                                     "(default)",
            "deployment_warm": deployment_name(gossip, ", `evaluate_nodes=false`")},
            "iteration"),
        "",
        f"simulation/engine = **{r['simulation_over_engine']:.2f}x** per iteration, with "
        f"`strategy.evaluate_nodes=false` (target ≤ 3x: {met})"
        + (f"; with the default `evaluate_nodes=true` (the server also evaluates all "
           f"{gossip['nodes']} node models every iteration) simulation_eval_nodes/engine = "
           f"**{r['simulation_eval_nodes_over_engine']:.2f}x**"
           if "simulation_eval_nodes_over_engine" in r else "")
        + ". engine trains and mixes only (no evaluation); simulation also evaluates the mean "
        "model centrally every iteration (digits' 359 test images, about 0.01 s). samples/s: "
        f"{gossip['samples_per_round']} rows per iteration (16 nodes x 1 step x batch 32, "
        "nominal: a node with fewer than 32 examples takes all it has) / median seconds. "
        + deployment_ratio(gossip, "iteration"),
        "",
        "Memory of simulation at its peak, by process (RSS MB): "
        + breakdown(gossip["systems"]["simulation"]) + ".",
        "",
        *deployment_lines(report, gossip),
        per_round_line(gossip, ["engine", "simulation", "simulation_eval_nodes",
                                "deployment_warm"]),
        "",
    ]


def main(argv=None) -> int:
    from bench.run import main as run_main

    return run_main(argv, workload=NAME)


if __name__ == "__main__":
    sys.exit(main())
