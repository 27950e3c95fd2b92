"""The FedAvg comparison (workload ``fedavg-fmnist``): fedlocal against the same SGD steps
without Flower and against a quickstart-style Flower app.

    python -m bench.fedavg_compare [--rounds 5] [--clients 10] [--deployment] [--quick]

FedAvg, ReLU MLP 784-128-128-10 on Fashion-MNIST, ``--clients`` clients (Dirichlet 0.5),
1 local epoch per round, the fmnist task's batch size and learning rate, ``--rounds``
rounds. Measured in this order, so that drift shows (``bench.systems`` says what each
is): ``engine``, ``limit`` (the same steps over one worker process per core),
``simulation``, ``pfl`` (pfl-research, where it is installed), ``deployment_warm`` (only
with ``--deployment``; ``--deployment-rounds``), ``quickstart_baseline``
(``bench/quickstart_baseline``, not with ``--no-baseline``), ``engine_again`` (not with
``--quick``). Targets: simulation/engine <= 1.3 per round, quickstart_baseline/simulation
>= 2; issue 16's, with 10 clients: simulation/limit <= 1.2.

Alone it writes ``bench/results/<timestamp>.json`` and ``.md`` as ``python -m bench.run
--workloads fedavg-fmnist`` does.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.common import log, with_device
from bench.procmem import percentile
from bench.report import breakdown, deployment_lines, fmt, per_round_line
from bench.systems import (
    deployment_available,
    deployment_rounds,
    run_deployment_warm,
    run_engine,
    run_fedlocal,
    run_limit,
    run_pfl,
    run_quickstart_baseline,
)

NAME = "fedavg-fmnist"
QUICK = "2 rounds, engine once (no engine_again)"
DEPLOYMENT = True  # takes --deployment
# The fmnist workload as fedlocal config keys; batch size and lr stay the task's defaults.
# example-weighted as Flower's FedAvg in quickstart_baseline (the app's default is uniform)
FEDAVG_FMNIST = {"task.name": "fmnist", "train.local_epochs": 1, "data.partition": "dirichlet",
                 "data.alpha": 0.5, "run.seed": 0, "strategy.weighting": "examples"}
# (system, its label in the table), in the table's order
LABELS = {
    "engine": "engine: pure compute, no Flower",
    "limit": "limit: the same steps, one worker process per core",
    "simulation": "simulation: fedlocal, Flower's simulation engine",
    "pfl": "pfl: pfl-research, fedlocal's splits",
    "deployment_warm": "deployment_warm: fedlocal, local deployment, warm workers",
    "quickstart_baseline": "quickstart_baseline: quickstart-style app, simulation",
    "engine_again": "engine_again: pure compute, again (after quickstart_baseline)",
}


def add_arguments(parser) -> None:
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of fedavg-fmnist (default 5; quick 2)")
    parser.add_argument("--clients", type=int, default=10,
                        help="clients of fedavg-fmnist (default 10)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip quickstart_baseline, the quickstart-style app (for quick A/B "
                        "runs of the app); implies --no-docs")


def finish_args(args, parser) -> None:
    args.rounds = args.rounds or (2 if args.quick else 5)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (the first round is start-up)")
    if args.no_baseline:
        args.no_docs = True  # the docs show only complete runs


def run(args) -> dict:
    from bench.baseline_data import prepare

    overrides = with_device(args, FEDAVG_FMNIST)
    log(f"fedavg-fmnist: {args.clients} clients, {args.rounds} rounds")
    result: dict = {"clients": args.clients, "rounds": args.rounds, "config": overrides,
                    "systems": {}}
    systems = result["systems"]
    log("engine: pure compute, no Flower")
    systems["engine"] = run_engine(overrides, args.clients, args.rounds, args.engine_threads)
    examples = systems["engine"]["examples_per_round"][0]
    log(f"    median {systems['engine']['median']:.3f} s/round")
    log("limit: the same steps over one worker process per core")
    systems["limit"] = run_limit(overrides, args.clients, args.rounds, examples)
    log(f"    median {systems['limit']['median']:.3f} s/round")
    log("simulation: fedlocal in Flower's simulation engine")
    systems["simulation"] = run_fedlocal(overrides, args.clients, args.rounds, examples,
                                         args.app_dir)
    log(f"    median {systems['simulation']['median']:.3f} s/round")
    log("pfl: pfl-research on fedlocal's splits")
    systems["pfl"] = run_pfl(overrides, args.clients, args.rounds, examples, args.pfl_threads)
    log(f"    median {systems['pfl']['median']:.3f} s/round" if systems["pfl"].get("available", True)
        else f"    {systems['pfl']['note']}")
    if not deployment_available():
        systems["deployment_warm"] = {
            "available": False, "note": "not available (no deploy.launch.LocalDeployment)"}
    elif not args.deployment:
        systems["deployment_warm"] = {"available": False, "note": "not measured (add --deployment)"}
    else:
        systems["deployment_warm"] = run_deployment_warm(
            args, overrides, args.clients, deployment_rounds(args, args.rounds), examples)
    if args.no_baseline:
        systems["quickstart_baseline"] = {"available": False, "note": "skipped (--no-baseline)"}
    else:
        with tempfile.TemporaryDirectory(prefix="fedlocal-bench-data-") as data_dir:
            log("quickstart_baseline: preparing its Arrow dataset (not timed)")
            prepare(data_dir)
            log("quickstart_baseline: the quickstart-style app in Flower's simulation engine")
            systems["quickstart_baseline"] = run_quickstart_baseline(
                Path(data_dir), args.clients, args.rounds, examples)
        log(f"    median {systems['quickstart_baseline']['median']:.3f} s/round")
    if not args.quick:
        log("engine_again: pure compute, again")
        systems["engine_again"] = run_engine(overrides, args.clients, args.rounds,
                                             args.engine_threads)
        log(f"    median {systems['engine_again']['median']:.3f} s/round")
    engine_rounds = (systems["engine"]["round_seconds"][1:]
                     + systems.get("engine_again", {}).get("round_seconds", [None])[1:])
    engine_median = percentile([s for s in engine_rounds if s is not None], 50)
    sim, baseline = systems["simulation"], systems["quickstart_baseline"]
    result["engine_median"] = engine_median
    has_baseline = baseline.get("available", True)
    result["ratios"] = {
        "simulation_over_engine": sim["median"] / engine_median,
        "simulation_over_quickstart_baseline":
            sim["median"] / baseline["median"] if has_baseline else None,
        "quickstart_baseline_over_simulation":
            baseline["median"] / sim["median"] if has_baseline else None,
    }
    result["ratios"].update(peer_ratios(result))
    if systems["deployment_warm"].get("available", True):
        result["ratios"]["deployment_warm_over_engine"] = (systems["deployment_warm"]["median"]
                                                           / engine_median)
    result["targets"] = {
        "simulation_within_1.3x_engine": result["ratios"]["simulation_over_engine"] <= 1.3}
    if has_baseline:
        result["targets"]["fedlocal_2x_faster_than_quickstart_baseline"] = (
            result["ratios"]["quickstart_baseline_over_simulation"] >= 2.0)
    if args.clients == 10:  # issue 16's target for 10 clients; None: not judged (anchor_broken)
        result["targets"]["simulation_within_1.2x_limit"] = (
            None if anchor_broken(systems["limit"], engine_median)
            else result["ratios"]["simulation_over_limit"] <= 1.2)
    return result


def anchor_broken(limit: dict, engine_median: float) -> bool:
    """Whether ``limit`` was slower than ``engine``: the same steps over more processes
    can only be slower when its workers did not get a core each (a busy machine), and
    then it anchors nothing."""
    return bool(limit.get("median") and engine_median and limit["median"] > engine_median)


def peer_ratios(fed: dict) -> dict:
    """simulation's median round over limit's and over pfl's (None where one did not
    run): what ``bench.run``'s summary line prints for this workload."""
    systems = fed["systems"]
    sim = systems["simulation"]["median"]
    out = {}
    for key in ("limit", "pfl"):
        s = systems.get(key)
        out[f"simulation_over_{key}"] = (sim / s["median"] if s and s.get("available", True)
                                         and s.get("median") else None)
    return out


# ----------------------------------------------------------------------------- report

def noise_line(fed: dict) -> str:
    """How far apart the repeated measurements are: engine and engine_again, and the
    spread of each system's rounds after the first."""
    systems = fed["systems"]
    parts = []
    if "engine_again" in systems:
        a1, a2 = systems["engine"]["median"], systems["engine_again"]["median"]
        parts.append(f"engine and engine_again's medians differ by {abs(a1 - a2) / min(a1, a2):.0%} "
                     f"({a1:.3f} vs {a2:.3f} s)")
    for key in ("engine", "limit", "simulation", "pfl", "deployment_warm", "quickstart_baseline"):
        s = systems.get(key, {"available": False})
        if s.get("available", True) and s.get("min") and s.get("max") and len(s["round_seconds"]) > 2:
            parts.append(f"{key}: rounds after the first span {s['min']:.2f}–{s['max']:.2f} s "
                         f"(max/min {s['max'] / s['min']:.2f})")
    return ("Noise: " + "; ".join(parts) + ".") if parts else "Noise: too few rounds to tell."


def peer_line(fed: dict) -> str:
    """simulation against limit and pfl, with issue 16's target where it applies."""
    r, t = fed["ratios"], fed["targets"]
    parts = []
    if r.get("simulation_over_limit") is not None:
        part = f"simulation/limit = **{r['simulation_over_limit']:.2f}x**"
        if t.get("simulation_within_1.2x_limit") is not None:
            part += (" (issue 16's target with 10 clients ≤ 1.2x: "
                     f"{'met' if t['simulation_within_1.2x_limit'] else 'not met'} in this run)")
        elif "simulation_within_1.2x_limit" in t:
            part += (" (issue 16's target with 10 clients ≤ 1.2x: not judged, limit was slower "
                     "than engine in this run: its workers did not get a core each)")
        parts.append(part)
    if r.get("simulation_over_pfl") is not None:
        pfl = fed["systems"]["pfl"]
        parts.append(f"simulation/pfl = **{r['simulation_over_pfl']:.2f}x** (pfl-research "
                     f"{pfl.get('pfl_version')}, {pfl.get('torch_threads')} torch threads)")
    else:
        parts.append("pfl " + fed["systems"].get("pfl", {}).get("note", "not run"))
    return "; ".join(parts) + "."


def markdown(report: dict, fed: dict) -> list[str]:
    lines = [
        f"### fedavg-fmnist: {fed['clients']} clients, {fed['rounds']} rounds, 1 local epoch, "
        "batch 32, lr 0.05, Dirichlet(0.5)",
        "",
        "| system | round s (median) | round s (p90) | samples/s | first round s | "
        "start-up s | peak RSS MB | peak PSS MB | final test acc | vs engine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = dict(LABELS)
    c = fed["systems"].get("deployment_warm", {})
    if c.get("available", True) and "rounds" in c:
        names["deployment_warm"] += f" ({c['supernodes']} SuperNodes, {c['rounds']} rounds)"
    for key, name in names.items():
        s = fed["systems"].get(key)
        if s is None:
            continue
        if not s.get("available", True):
            why = s.get("note", "not run")
            lines.append(f"| {name} | {why} | | | | | | | | |")
            continue
        mem = s["memory"]
        ratio = s["median"] / fed["engine_median"]
        lines.append(
            f"| {name} | {fmt(s['median'], 3)} | {fmt(s['p90'], 3)} | "
            f"{fmt(s['samples_per_second'], 0)} | {fmt(s['first_round'])} | "
            f"{fmt(s['startup'])} | {mem['peak_rss_mb']:.0f} | {mem['peak_pss_mb']:.0f} | "
            f"{fmt(s['final_test_accuracy'], 4)} | {ratio:.2f}x |"
        )
    r, t = fed["ratios"], fed["targets"]
    versus_baseline = (
        f"simulation/quickstart_baseline = **{r['simulation_over_quickstart_baseline']:.2f}x**, "
        f"i.e. fedlocal is {r['quickstart_baseline_over_simulation']:.1f}x faster per round than "
        "the baseline (target ≥ 2x: "
        f"{'met' if t['fedlocal_2x_faster_than_quickstart_baseline'] else 'not met'})"
        if r["simulation_over_quickstart_baseline"] is not None else "quickstart_baseline not run")
    lines += [
        "",
        f"simulation/engine = **{r['simulation_over_engine']:.2f}x** (target ≤ 1.3x: "
        f"{'met' if t['simulation_within_1.3x_engine'] else 'not met'}); {versus_baseline}"
        + (f"; deployment_warm/engine = **{r['deployment_warm_over_engine']:.2f}x**"
           if "deployment_warm_over_engine" in r else "")
        + ". engine here is the median of the rounds after the first of engine and "
        f"engine_again together: {fed['engine_median']:.3f} s.",
        "",
        peer_line(fed),
        "",
        noise_line(fed),
        "",
        "Memory of simulation at its peak, by process (RSS MB): "
        + breakdown(fed["systems"]["simulation"]) + ".",
        "",
        *deployment_lines(report, fed),
        per_round_line(fed, ["engine", "limit", "simulation", "pfl", "deployment_warm",
                             "quickstart_baseline", "engine_again"], digits=2),
        "",
    ]
    return lines


def main(argv=None) -> int:
    from bench.run import main as run_main

    return run_main(argv, workload=NAME)


if __name__ == "__main__":
    sys.exit(main())
