"""fedlocal's benchmark: one command, side by side in one run, results as JSON + markdown.

    python -m bench.run            # the full benchmark (about 5 minutes on 2 cores)
    python -m bench.run --quick    # a small version (about 2 minutes)

Workloads (``--workloads``, comma-separated):

``fedavg-fmnist``
    FedAvg, ReLU MLP 784-128-128-10 on Fashion-MNIST, ``--clients`` clients (Dirichlet 0.5),
    1 local epoch per round, the fmnist task's batch size and learning rate, ``--rounds``
    rounds. Measured in this order, so that drift shows: (a) pure compute (FedAvg by hand,
    ``bench.pure``), (b) fedlocal in Flower's simulation engine, (c) fedlocal on the local
    multi-process deployment (only with ``--deployment``; ``--deployment-rounds``), (d) the
    quickstart-style baseline app (``bench/quickstart_baseline``) in the simulation engine,
    (a) again (not with ``--quick``).
``scaling-fmnist``
    fedlocal in simulation with 10, 100, 1000 clients (``--scaling-clients``), 10 % sampled
    per round, IID partitions, next to pure compute of the same sampled clients.
``gossip-digits``
    Gossip-PGA on digits (ReLU MLP), 16 nodes on a ring, a global average every 4
    iterations, 1 local step (batch 32) per iteration, ``--gossip-rounds`` iterations (30).
    (a) = (d): the one-process reference simulator ``strategies.gossip_reference`` timed
    per iteration (``bench.pure_reference``); (b) fedlocal in simulation with
    ``strategy.evaluate_nodes=false`` (the ratio), and (b') with the default ``true``;
    with ``--deployment``, (c) as (b) on 16 SuperNode processes.
``clipped-shakespeare``
    Clipped FedAvg (CELGC), character LSTM on tiny Shakespeare (``--shakespeare``; skipped
    if absent), 8 IID clients, I = 4 local steps of batch 16, eta = 20, gamma = 5,
    ``--shakespeare-rounds`` rounds (8). (a) = (d): ``strategies.fedavg_reference``;
    (b) fedlocal in simulation; with ``--deployment``, (c) on 8 SuperNode processes.

(c), the local deployment (``--deployment``): ``server.launch.LocalDeployment``, a
SuperLink and one SuperNode process per client over gRPC on loopback, where every
ClientApp message runs in a fresh ``flwr-clientapp`` process that hands it to the node's
warm worker (``client.worker``; a worker counts as its SuperExec's child in the process
accounting). A deployed round costs
seconds, so (c) runs ``--deployment-rounds`` rounds (default: 4, or the workload's
rounds if fewer), with ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.2`` (``DEPLOYMENT_ENV``) and
a fresh split cache (``FEDLOCAL_CACHE``) per run. Its processes' lives and CPU seconds
are recorded, and a ClientApp process's start-up is timed on its own afterwards
(``clientapp_startup``).

Writes ``bench/results/<timestamp>.json`` and ``.md``; a full run (not ``--quick``) also
copies the table, with the commit it measured, into docs/benchmarks.md and draws
docs/figures/scaling.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.procmem import TreeMemory, percentile

REPO = Path(__file__).resolve().parents[1]
BASELINE_APP = REPO / "bench" / "quickstart_baseline"
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "benchmarks.md"
FIGURE = REPO / "docs" / "figures" / "scaling.png"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# The fmnist workload as fedlocal config keys; batch size and lr stay the task's defaults.
# example-weighted, as bench.pure's FedAvg by hand (the app's default weighting is uniform)
FEDAVG_FMNIST = {"task.name": "fmnist", "train.local_epochs": 1, "data.partition": "dirichlet",
                 "data.alpha": 0.5, "run.seed": 0, "strategy.weighting": "examples"}
# Added to every Flower process's environment in (c): SuperExec looks for new ClientApp
# tasks every 0.2 s instead of Flower's 1 s (../shared/ENVIRONMENT.md: a good value on
# small hosts). Each (c) run also gets FEDLOCAL_CACHE, a fresh split-cache folder.
DEPLOYMENT_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}


def log(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", flush=True)


# ----------------------------------------------------------------------------- statistics

def round_stats(seconds: list[float], examples: int | None) -> dict:
    """Median and p90 of the rounds after the first, the first round, samples/s."""
    after = seconds[1:]
    median = percentile(after, 50)
    return {
        "round_seconds": seconds,
        "first_round": seconds[0] if seconds else None,
        "median": median,
        "p90": percentile(after, 90),
        "min": min(after) if after else None,
        "max": max(after) if after else None,
        "samples_per_second": examples / median if examples and median else None,
    }


# ----------------------------------------------------------------------------- the systems


def run_measured(module: str, args: list[str]) -> tuple[dict, float, TreeMemory]:
    """Run ``python -m module ... --out FILE`` in a process of its own (so its memory is
    measured alone); its JSON result, wall seconds and memory record."""
    with tempfile.TemporaryDirectory(prefix="fedlocal-bench-") as tmp:
        out = Path(tmp) / "result.json"
        start = time.perf_counter()
        with TreeMemory() as memory:
            proc = subprocess.Popen([sys.executable, "-m", module, *args, "--out", str(out)],
                                    cwd=REPO)
            memory.add(proc.pid)
            proc.wait()
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{module} failed with exit code {proc.returncode}")
        return json.loads(out.read_text()), wall, memory

def pure_compute(overrides: dict, clients: int, rounds: int, threads: int, fraction: float = 1.0,
                 min_nodes: int = 2) -> dict:
    """(a) in a subprocess of its own, so that its memory is measured alone."""
    result, wall, memory = run_measured(
        "bench.pure", ["--clients", str(clients), "--rounds", str(rounds), "--fraction",
                       str(fraction), "--min-nodes", str(min_nodes), "--threads", str(threads),
                       "--overrides", json.dumps(overrides)])
    records = result["rounds"]
    examples = records[0]["examples"] if records else None
    return {
        **round_stats([r["seconds"] for r in records], examples),
        "startup": result["startup"],
        "wall": wall,
        "memory": memory.as_dict(),
        "examples_per_round": [r["examples"] for r in records],
        "train_seconds": [r["train_seconds"] for r in records],
        "final_test_accuracy": records[-1]["test_accuracy"] if records else None,
        "torch_threads": result["torch_threads"],
        "device": result["device"],
    }


def deployment_available() -> bool:
    """Whether this checkout has ``server.launch.LocalDeployment`` for (c)."""
    from bench.simulation import deployment_available as available

    return available()


def deployment_rounds(args, workload_rounds: int) -> int:
    """Rounds of (c): ``--deployment-rounds``, else 4 or the workload's rounds if fewer."""
    return args.deployment_rounds or min(4, workload_rounds)


def deployed(args, overrides: dict, clients: int, rounds: int, examples: int | None) -> dict:
    """(c): ``fedlocal_sim`` on the local deployment (with ``--deployment-env``), logged."""
    log(f"(c) fedlocal in the local deployment: a SuperLink + {clients} SuperNode processes, "
        f"{rounds} rounds")
    system = fedlocal_sim(overrides, clients, rounds, examples, args.app_dir, deployment=True,
                          deployment_env=args.deployment_env)
    log(f"    median {system['median']:.3f} s/round, peak RSS "
        f"{system['memory']['peak_rss_mb']:.0f} MB")
    return system


def clientapp_startup(repeats: int = 3) -> dict:
    """What a fresh ClientApp process pays before its handler runs, timed alone (nothing
    else of the benchmark running): wall and CPU seconds (median of ``repeats``) of
    ``flwr-clientapp --help`` (through PATH, as SuperExec starts it: interpreter and
    Flower's CLI imports), of ``import torch``, of importing everything a fedlocal
    ClientApp process imports before it can serve a message (Flower's ClientApp runtime
    and ``client.app``, which hands the message to the node's warm worker) and of what the
    warm worker imports once per run and node (``client.handlers``: torch, fedlocal's tasks
    and config; a ClientApp process without a warm worker imports it per message)."""
    probes = {
        "flwr-clientapp --help": ["flwr-clientapp", "--help"],
        "import torch": [sys.executable, "-c", "import torch"],
        "import flwr-clientapp runtime + client.app": [
            sys.executable, "-c", "import flwr.supernode.cli.flwr_clientapp, client.app"],
        "import client.handlers (warm worker, once per run)": [
            sys.executable, "-c", "import client.handlers"],
    }
    out = {}
    for name, cmd in probes.items():
        walls, cpus, rss = [], [], []
        for _ in range(repeats):
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            walls.append(time.perf_counter() - start)
            cpus.append(usage.ru_utime + usage.ru_stime)
            rss.append(usage.ru_maxrss / 1024)  # KiB on Linux
        out[name] = {"wall": percentile(walls, 50), "cpu": percentile(cpus, 50),
                     "max_rss_mb": percentile(rss, 50), "walls": walls, "cpus": cpus,
                     "returncode": proc.returncode}
    return out


def fedlocal_sim(overrides: dict, clients: int, rounds: int, examples: int | None,
                 app_dir: Path = REPO, deployment: bool = False,
                 deployment_env: dict | None = None) -> dict:
    """(b) fedlocal on a private simulation SuperLink, or (c) with ``deployment`` on a
    SuperLink and ``clients`` SuperNode processes; round times from metrics.jsonl."""
    from bench.simulation import AppSimulation, app_deployment

    with tempfile.TemporaryDirectory(prefix="fedlocal-bench-") as tmp:
        config = {**overrides, "run.rounds": rounds, "run.output_dir": tmp,
                  "run.name": "bench", "run.save_model": False}
        # the ClientApp processes' split cache starts empty: the first round builds it
        env = {**DEPLOYMENT_ENV, "FEDLOCAL_CACHE": str(Path(tmp) / "split-cache"),
               **(deployment_env or {})}
        # Ray's workers put the SuperLink's working directory first on their sys.path, so
        # the ClientApps import fedlocal's modules from there, not from the app bundle:
        # start the SuperLink inside the app folder under test.
        cwd = os.getcwd()
        os.chdir(app_dir)
        # train.device='cuda' (--device): every simulated client gets a 1/clients share of
        # the GPU, since Ray hides the GPU from clients without one
        gpus = 1 / clients if overrides.get("train.device") == "cuda" else 0.0
        try:
            if deployment:
                with app_deployment(clients, env=env) as dep:
                    run = dep.run_app(app_dir, config)
            else:
                with AppSimulation() as sim:
                    run = sim.run_app(app_dir, config, num_supernodes=clients, cpus_per_client=1,
                                      gpus_per_client=gpus)
        finally:
            os.chdir(cwd)
        folder = Path(tmp) / "bench"
        metrics = folder / "metrics.jsonl"
        if run.status != "finished:completed" or not metrics.is_file():
            raise RuntimeError(f"fedlocal run {run.status}:\n{run.output[-4000:]}")
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        summary = json.loads((folder / "summary.json").read_text())
    seconds = [r["seconds"] for r in records]
    extra = {}
    if deployment:
        if env["FEDLOCAL_CACHE"].startswith(tmp):
            env["FEDLOCAL_CACHE"] = "<a fresh folder>"
        extra = {"rounds": rounds, "supernodes": clients, "env": env,
                 "processes": run.processes}
    return {
        **extra,
        **round_stats(seconds, examples),
        "startup": run.wall - sum(seconds),
        "wall": run.wall,
        "superlink_start": run.superlink_start,
        "serverapp_seconds": summary.get("seconds"),
        "memory": run.memory,
        "final_test_accuracy": records[-1].get("test_accuracy"),
        "num_replies": [r.get("num_replies") for r in records],
        "num_failures": [r.get("num_failures") for r in records],
        "mean_client_train_seconds": [r.get("train_seconds") for r in records],
        **({"mean_client_process_seconds": [r.get("process_seconds") for r in records],
            "round_ends": [r.get("elapsed") for r in records]} if deployment else {}),
    }


def baseline_sim(data_dir: Path, clients: int, rounds: int, examples: int | None) -> dict:
    """(d) the quickstart-style app; round times from the times its evaluate_fn wrote."""
    from bench.simulation import AppSimulation

    with tempfile.TemporaryDirectory(prefix="fedlocal-bench-") as tmp:
        metrics = Path(tmp) / "baseline-metrics.jsonl"
        config = {"num-server-rounds": rounds, "data-dir": str(data_dir),
                  "metrics-file": str(metrics), "partitioner": "dirichlet",
                  "dirichlet-alpha": 0.5, "seed": 0, "local-epochs": 1,
                  "batch-size": 32, "learning-rate": 0.05}
        with AppSimulation() as sim:
            run = sim.run_app(BASELINE_APP, config, num_supernodes=clients, cpus_per_client=1)
        if run.status != "finished:completed" or not metrics.is_file():
            raise RuntimeError(f"baseline run {run.status}:\n{run.output[-4000:]}")
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    times = [r["time"] for r in records]  # round 0 (initial evaluation), 1, 2, ...
    seconds = [b - a for a, b in zip(times, times[1:])]
    return {
        **round_stats(seconds, examples),
        "startup": run.wall - sum(seconds),
        "wall": run.wall,
        "superlink_start": run.superlink_start,
        "memory": run.memory,
        "final_test_accuracy": records[-1].get("test_accuracy"),
    }


# ----------------------------------------------------------------------------- workloads

def with_device(args, overrides: dict) -> dict:
    """The workload's config, with ``train.device`` from ``--device`` when given."""
    return {**overrides, "train.device": args.device} if args.device else dict(overrides)


def fedavg_fmnist(args) -> dict:
    from bench.baseline_data import prepare

    overrides = with_device(args, FEDAVG_FMNIST)
    log(f"fedavg-fmnist: {args.clients} clients, {args.rounds} rounds")
    result: dict = {"clients": args.clients, "rounds": args.rounds, "config": overrides,
                    "systems": {}}
    systems = result["systems"]
    log("(a) pure compute")
    systems["a"] = pure_compute(overrides, args.clients, args.rounds, args.pure_threads)
    examples = systems["a"]["examples_per_round"][0]
    log(f"    median {systems['a']['median']:.3f} s/round")
    log("(b) fedlocal in simulation")
    systems["b"] = fedlocal_sim(overrides, args.clients, args.rounds, examples, args.app_dir)
    log(f"    median {systems['b']['median']:.3f} s/round")
    if not deployment_available():
        systems["c"] = {"available": False, "note": "not available (no server.launch.LocalDeployment)"}
    elif not args.deployment:
        systems["c"] = {"available": False, "note": "not measured (add --deployment)"}
    else:
        systems["c"] = deployed(args, overrides, args.clients,
                                deployment_rounds(args, args.rounds), examples)
    if args.no_baseline:
        systems["d"] = {"available": False, "note": "skipped (--no-baseline)"}
    else:
        with tempfile.TemporaryDirectory(prefix="fedlocal-bench-data-") as data_dir:
            log("(d) quickstart-style baseline: preparing its Arrow dataset (not timed)")
            prepare(data_dir)
            log("(d) quickstart-style baseline in simulation")
            systems["d"] = baseline_sim(Path(data_dir), args.clients, args.rounds, examples)
        log(f"    median {systems['d']['median']:.3f} s/round")
    if not args.quick:
        log("(a) pure compute, again")
        systems["a2"] = pure_compute(overrides, args.clients, args.rounds, args.pure_threads)
        log(f"    median {systems['a2']['median']:.3f} s/round")
    pure_rounds = systems["a"]["round_seconds"][1:] + systems.get("a2", {}).get("round_seconds", [None])[1:]
    pure_median = percentile([s for s in pure_rounds if s is not None], 50)
    b, d = systems["b"], systems["d"]
    result["pure_median"] = pure_median
    has_d = d.get("available", True)
    result["ratios"] = {
        "b_over_a": b["median"] / pure_median,
        "b_over_d": b["median"] / d["median"] if has_d else None,
        "d_over_b": d["median"] / b["median"] if has_d else None,
    }
    if systems["c"].get("available", True):
        result["ratios"]["c_over_a"] = systems["c"]["median"] / pure_median
    result["targets"] = {"sim_within_1.3x_pure": result["ratios"]["b_over_a"] <= 1.3}
    if has_d:
        result["targets"]["fedlocal_2x_faster_than_baseline"] = result["ratios"]["d_over_b"] >= 2.0
    return result


def scaling_fmnist(args) -> dict:
    overrides = with_device(args, {"task.name": "fmnist", "train.local_epochs": 1,
                                   "data.partition": "iid", "run.seed": 0,
                                   "strategy.fraction_train": 0.1, "strategy.weighting": "examples"})
    points = []
    for clients in args.scaling_clients:
        min_nodes = max(1, clients // 10)
        config = {**overrides, "strategy.min_train_nodes": min_nodes,
                  "strategy.min_available_nodes": clients}
        log(f"scaling: {clients} clients, {min_nodes} sampled per round, {args.scaling_rounds} rounds")
        pure = pure_compute(config, clients, args.scaling_rounds, args.pure_threads,
                            fraction=0.1, min_nodes=min_nodes)
        examples = round(sum(pure["examples_per_round"]) / len(pure["examples_per_round"]))
        sim = fedlocal_sim(config, clients, args.scaling_rounds, examples, args.app_dir)
        log(f"    sim median {sim['median']:.3f} s/round, pure {pure['median']:.3f}, "
            f"peak RSS {sim['memory']['peak_rss_mb']:.0f} MB")
        points.append({"clients": clients, "sampled": min_nodes, "sim": sim, "pure": pure,
                       "ratio": sim["median"] / pure["median"]})
    result = {"rounds": args.scaling_rounds, "config": overrides, "points": points}
    hundred = next((p for p in points if p["clients"] == 100), None)
    if hundred is not None:
        result["targets"] = {
            "100_clients_under_4GB_rss": hundred["sim"]["memory"]["peak_rss_mb"] < 4096,
            "100_clients_under_4GB_pss": hundred["sim"]["memory"]["peak_pss_mb"] < 4096,
        }
    return result


# Gossip-PGA on digits (the default task, ReLU MLP): 16 nodes on a ring, 1 local step per
# iteration, a global average every 4 iterations.
GOSSIP_DIGITS = {"task.name": "digits", "strategy.name": "gossip_pga", "strategy.topology": "ring",
                 "strategy.averaging": "periodic", "strategy.period": 4, "train.local_steps": 1,
                 "train.local_epochs": 0, "run.seed": 0}
GOSSIP_NODES = 16
# Clipped FedAvg (CELGC) on tiny Shakespeare, character LSTM: docs/celgc.md's setting
# (eta = 20, gamma = 5, batch 16), 8 clients, I = 4 local steps, IID split.
CLIPPED_SHAKESPEARE = {"task.name": "shakespeare", "strategy.name": "clipped_fedavg",
                       "train.local_steps": 4, "train.local_epochs": 0, "data.partition": "iid",
                       "train.lr": 20.0, "strategy.clip_gamma": 5.0, "run.seed": 0}
SHAKESPEARE_CLIENTS = 8


def reference_compute(kind: str, overrides: dict, clients: int, rounds: int, threads: int,
                      samples: int) -> dict:
    """(a) for gossip-digits / clipped-shakespeare: fedlocal's one-process reference
    simulator (``bench.pure_reference``) in a subprocess of its own."""
    result, wall, memory = run_measured(
        "bench.pure_reference", ["--kind", kind, "--clients", str(clients), "--rounds",
                                 str(rounds), "--threads", str(threads),
                                 "--overrides", json.dumps(overrides)])
    return {
        **round_stats(result["round_seconds"], samples),
        "startup": result["startup"],
        "wall": wall,
        "memory": memory.as_dict(),
        "final_test_accuracy": result.get("final_test_accuracy"),
        "final_train_loss": result.get("final_train_loss"),
        "torch_threads": result["torch_threads"],
    }


def gossip_digits(args) -> dict:
    rounds, nodes = args.gossip_rounds, GOSSIP_NODES
    config = with_device(args, GOSSIP_DIGITS)
    samples = nodes * config["train.local_steps"] * 32  # digits' batch size: 32
    log(f"gossip-digits: {nodes} nodes on a ring, {rounds} iterations, 1 local step each")
    result: dict = {"nodes": nodes, "rounds": rounds, "config": config,
                    "samples_per_round": samples, "systems": {}}
    systems = result["systems"]
    log("(a) pure compute = the reference simulator (strategies.gossip_reference)")
    systems["a"] = reference_compute("gossip", config, nodes, rounds, args.pure_threads, samples)
    log(f"    median {systems['a']['median']:.4f} s/iteration")
    log("(b) fedlocal in simulation, strategy.evaluate_nodes=false")
    systems["b"] = fedlocal_sim({**config, "strategy.evaluate_nodes": False}, nodes, rounds,
                                samples, args.app_dir)
    log(f"    median {systems['b']['median']:.3f} s/iteration")
    if not args.quick:
        log("(b') fedlocal in simulation, strategy.evaluate_nodes=true (the default)")
        systems["b_eval"] = fedlocal_sim({**config, "strategy.evaluate_nodes": True}, nodes,
                                         rounds, samples, args.app_dir)
        log(f"    median {systems['b_eval']['median']:.3f} s/iteration")
    if args.deployment and deployment_available():
        systems["c"] = deployed(args, {**config, "strategy.evaluate_nodes": False}, nodes,
                                deployment_rounds(args, rounds), samples)
    a = systems["a"]["median"]
    result["ratios"] = {"b_over_a": systems["b"]["median"] / a}
    if "b_eval" in systems:
        result["ratios"]["b_eval_over_a"] = systems["b_eval"]["median"] / a
    if "c" in systems:
        result["ratios"]["c_over_a"] = systems["c"]["median"] / a
    result["targets"] = {"sim_within_3x_pure": result["ratios"]["b_over_a"] <= 3.0}
    return result


def clipped_shakespeare(args) -> dict:
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
    log("(a) pure compute = the reference simulator (strategies.fedavg_reference)")
    systems["a"] = reference_compute("fedavg", overrides, clients, rounds, args.pure_threads,
                                     samples)
    log(f"    median {systems['a']['median']:.3f} s/round")
    log("(b) fedlocal in simulation")
    systems["b"] = fedlocal_sim(overrides, clients, rounds, samples, args.app_dir)
    log(f"    median {systems['b']['median']:.3f} s/round")
    if args.deployment and deployment_available():
        systems["c"] = deployed(args, overrides, clients, deployment_rounds(args, rounds), samples)
    result["ratios"] = {"b_over_a": systems["b"]["median"] / systems["a"]["median"]}
    if "c" in systems:
        result["ratios"]["c_over_a"] = systems["c"]["median"] / systems["a"]["median"]
    return result


WORKLOADS = {"fedavg-fmnist": fedavg_fmnist, "scaling-fmnist": scaling_fmnist,
             "gossip-digits": gossip_digits, "clipped-shakespeare": clipped_shakespeare}


# ----------------------------------------------------------------------------- reporting

def git_commit() -> str:
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain") else "")


def machine() -> dict:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), "")
    except OSError:
        pass
    import torch

    try:
        import flwr

        flwr_version = flwr.__version__
    except (ImportError, AttributeError):
        flwr_version = None
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__, "flwr": flwr_version,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def breakdown(system: dict, top: int = 6) -> str:
    parts = system["memory"].get("rss_mb_at_peak_by_process", {})
    return ", ".join(f"{name} {mb:.0f}" for name, mb in list(parts.items())[:top])


def noise_line(fed: dict) -> str:
    """How far apart the repeated measurements are: the two (a) runs, and the spread of
    each system's rounds after the first."""
    systems = fed["systems"]
    parts = []
    if "a2" in systems:
        a1, a2 = systems["a"]["median"], systems["a2"]["median"]
        parts.append(f"the two (a) runs' medians differ by {abs(a1 - a2) / min(a1, a2):.0%} "
                     f"({a1:.3f} vs {a2:.3f} s)")
    for key in ("a", "b", "c", "d"):
        s = systems[key]
        if s.get("available", True) and s.get("min") and s.get("max") and len(s["round_seconds"]) > 2:
            parts.append(f"{key}: rounds after the first span {s['min']:.2f}–{s['max']:.2f} s "
                         f"(max/min {s['max'] / s['min']:.2f})")
    return ("Noise: " + "; ".join(parts) + ".") if parts else "Noise: too few rounds to tell."


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"Commit `{meta['commit']}`, {meta['started']}, {meta['machine']['cpus']} CPU cores "
        f"({meta['machine']['cpu_model'] or 'unknown CPU'}), "
        f"{'GPU ' + meta['machine']['gpu'] if meta['machine']['gpu'] else 'no GPU'}, "
        f"torch {meta['machine']['torch']}, flwr {meta['machine']['flwr']}; "
        f"load average {meta['load_before'][0]:.2f} before, {meta['load_after'][0]:.2f} after; "
        f"`{meta['command']}` ({meta['seconds']:.0f} s)."
        + (f" App for (b) and scaling: `{meta['args']['app_dir']}`." if meta["args"]["app_dir"] != str(REPO)
           else ""),
        "",
    ]
    fed = report["workloads"].get("fedavg-fmnist")
    if fed:
        lines += [
            f"### fedavg-fmnist: {fed['clients']} clients, {fed['rounds']} rounds, 1 local epoch, "
            "batch 32, lr 0.05, Dirichlet(0.5)",
            "",
            "| system | round s (median) | round s (p90) | samples/s | first round s | "
            "start-up s | peak RSS MB | peak PSS MB | final test acc | vs (a) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        names = {"a": "(a) pure compute, no Flower", "a2": "(a) pure compute, again (after d)",
                 "b": "(b) fedlocal, simulation", "c": "(c) fedlocal, local deployment",
                 "d": "(d) quickstart-style baseline, simulation"}
        c = fed["systems"].get("c", {})
        if c.get("available", True) and "rounds" in c:
            names["c"] += f" ({c['supernodes']} SuperNodes, {c['rounds']} rounds)"
        for key in ("a", "b", "c", "d", "a2"):
            s = fed["systems"].get(key)
            if s is None:
                continue
            if not s.get("available", True):
                why = s.get("note", "not run")
                lines.append(f"| {names[key]} | {why} | | | | | | | | |")
                continue
            mem = s["memory"]
            ratio = s["median"] / fed["pure_median"]
            lines.append(
                f"| {names[key]} | {fmt(s['median'], 3)} | {fmt(s['p90'], 3)} | "
                f"{fmt(s['samples_per_second'], 0)} | {fmt(s['first_round'])} | "
                f"{fmt(s['startup'])} | {mem['peak_rss_mb']:.0f} | {mem['peak_pss_mb']:.0f} | "
                f"{fmt(s['final_test_accuracy'], 4)} | {ratio:.2f}x |"
            )
        r, t = fed["ratios"], fed["targets"]
        versus_d = (
            f"(b)/(d) = **{r['b_over_d']:.2f}x**, i.e. fedlocal is {r['d_over_b']:.1f}x faster per "
            f"round than the baseline (target ≥ 2x: "
            f"{'met' if t['fedlocal_2x_faster_than_baseline'] else 'not met'})"
            if r["b_over_d"] is not None else "(d) not run")
        lines += [
            "",
            f"(b)/(a) = **{r['b_over_a']:.2f}x** (target ≤ 1.3x: "
            f"{'met' if t['sim_within_1.3x_pure'] else 'not met'}); {versus_d}"
            + (f"; (c)/(a) = **{r['c_over_a']:.2f}x**" if "c_over_a" in r else "")
            + f". (a) is the median of the rounds after the first of both (a) runs: "
            f"{fed['pure_median']:.3f} s.",
            "",
            noise_line(fed),
            "",
            "Memory of (b) at its peak, by process (RSS MB): " + breakdown(fed["systems"]["b"]) + ".",
            "",
            *deployment_lines(report, fed),
            "Per-round seconds: " + "; ".join(
                f"{key} " + ", ".join(f"{x:.2f}" for x in fed["systems"][key]["round_seconds"])
                for key in ("a", "b", "c", "d", "a2")
                if key in fed["systems"] and fed["systems"][key].get("available", True)
            ) + ".",
            "",
        ]
    scale = report["workloads"].get("scaling-fmnist")
    if scale:
        lines += [
            f"### scaling-fmnist: 10 % of the clients per round, IID, 1 local epoch, "
            f"{scale['rounds']} rounds",
            "",
            "| clients | sampled per round | sim round s (median) | sim round s (p90) | "
            "pure compute round s | sim / pure | first round s | start-up s | "
            "peak RSS MB | peak PSS MB | processes |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for p in scale["points"]:
            sim, mem = p["sim"], p["sim"]["memory"]
            lines.append(
                f"| {p['clients']} | {p['sampled']} | {fmt(sim['median'], 3)} | "
                f"{fmt(sim['p90'], 3)} | {fmt(p['pure']['median'], 3)} | {p['ratio']:.2f}x | "
                f"{fmt(sim['first_round'])} | {fmt(sim['startup'])} | {mem['peak_rss_mb']:.0f} | "
                f"{mem['peak_pss_mb']:.0f} | {mem['max_processes']} |"
            )
        if "targets" in scale:
            t = scale["targets"]
            hundred = next(p for p in scale["points"] if p["clients"] == 100)["sim"]["memory"]
            lines += ["", f"100 simulated clients: peak RSS {hundred['peak_rss_mb']:.0f} MB, "
                      f"PSS {hundred['peak_pss_mb']:.0f} MB (target < 4096 MB: RSS "
                      f"{'met' if t['100_clients_under_4GB_rss'] else 'not met'}, PSS "
                      f"{'met' if t['100_clients_under_4GB_pss'] else 'not met'}). At the peak, "
                      "by process (RSS MB): " + breakdown(next(
                          p for p in scale["points"] if p["clients"] == 100)["sim"]) + "."]
        lines.append("")
    lines += reference_tables(report)
    lines += startup_lines(report)
    return "\n".join(lines)


def reference_rows(work: dict, names: dict, unit: str) -> list[str]:
    a = work["systems"]["a"]["median"]
    rows = []
    for key, name in names.items():
        s = work["systems"].get(key)
        if s is None:
            continue
        mem = s["memory"]
        acc = s.get("final_test_accuracy")
        rows.append(
            f"| {name} | {fmt(s['median'], 4)} | {fmt(s['p90'], 4)} | "
            f"{fmt(s['samples_per_second'], 0)} | {1 / s['median']:.1f} | {fmt(s['first_round'])} | "
            f"{fmt(s['startup'])} | {mem['peak_rss_mb']:.0f} | {mem['peak_pss_mb']:.0f} | "
            f"{fmt(acc, 4)} | {s['median'] / a:.2f}x |")
    head = [f"| system | {unit} s (median) | {unit} s (p90) | samples/s | {unit}s/s | "
            f"first {unit} s | start-up s | peak RSS MB | peak PSS MB | final test acc | vs (a) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    return head + rows


def per_round_line(work: dict, keys: list[str]) -> str:
    return "Per-round seconds: " + "; ".join(
        f"{key} " + ", ".join(f"{x:.3f}" for x in work["systems"][key]["round_seconds"])
        for key in keys if key in work["systems"]) + "."


def deployment_name(work: dict, suffix: str = "") -> str:
    c = work["systems"].get("c")
    if c is None:
        return "(c)"
    return f"(c) fedlocal, local deployment ({c['supernodes']} SuperNodes, {c['rounds']} rounds){suffix}"


def deployment_ratio(work: dict, unit: str) -> str:
    """The sentence on (c) under a reference table; as before when (c) was not run."""
    if "c_over_a" not in work["ratios"]:
        return "(c) local deployment: not measured."
    c = work["systems"]["c"]
    return (f"(c)/(a) = **{work['ratios']['c_over_a']:.1f}x** per {unit} (local deployment, "
            f"{c['supernodes']} SuperNode processes, {c['rounds']} {unit}s, median of the "
            f"{len(c['round_seconds']) - 1} after the first); (c)/(b) = "
            f"{c['median'] / work['systems']['b']['median']:.1f}x.")


def deployment_lines(report: dict, work: dict) -> list[str]:
    """Memory, CPU by program and ClientApp processes of (c), when it ran."""
    c = work["systems"].get("c")
    if not c or not c.get("available", True):
        return []
    mem, procs = c["memory"], c.get("processes", {})
    at_peak = mem.get("processes_at_peak_by_name", {})
    lines = [f"Memory of (c) at its peak, by process (RSS MB): {breakdown(c)}; up to "
             f"{mem['max_processes']} processes in the tree"
             + (f", {at_peak['flwr-clientapp']} of them ClientApp processes at the peak"
                if at_peak.get("flwr-clientapp") else "") + ".", ""]
    if c.get("env"):
        lines += ["Environment added to the Flower processes of (c): "
                  + ", ".join(f"`{k}={v}`" for k, v in c["env"].items()) + ".", ""]
    if procs:
        parts = []
        for name, g in list(procs.items())[:6]:
            part = f"{name or '?'} {g['cpu_seconds']:.1f} ({g['processes']}"
            if g["lifetime_median"] is not None and g["ended"] >= g["processes"] / 2:
                part += (f"; each lived {g['lifetime_median']:.1f} s median, "
                         f"{g['lifetime_p90']:.1f} s p90, and used {g['cpu_seconds_median']:.2f} CPU s")
            parts.append(part + ")")
        lines += ["CPU seconds spent in (c), by program, while `flwr run` ran (processes): "
                  + ", ".join(parts) + ".", ""]
    app = procs.get("flwr-clientapp")
    cores = report["meta"]["machine"]["cpus"]
    if app and c["median"]:
        rounds, clients = c["rounds"], c["supernodes"]
        per_round = app["cpu_seconds"] / rounds
        text = (f"ClientApp processes: {app['processes']} for {rounds} rounds x {clients} nodes, "
                f"{per_round:.1f} CPU s per round on average, i.e. "
                f"{per_round / (c['median'] * cores):.0%} of the {cores} cores over a median round "
                f"({c['median']:.2f} s)")
        startup = report.get("clientapp_startup", {}).get(
            "import flwr-clientapp runtime + client.app")
        if startup:
            imports = clients * startup["cpu"]
            text += (f"; their imports alone (flwr's ClientApp runtime and client.app: "
                     f"{startup['cpu']:.2f} CPU s each, timed alone) come to {imports:.1f} CPU s "
                     f"per round, {imports / per_round:.0%} of it")
        train = [x for x in c.get("mean_client_train_seconds", [])[1:] if x is not None]
        age = [x for x in c.get("mean_client_process_seconds", [])[1:] if x]
        if train:
            text += (f". The handlers' training (`train_seconds`, mean over a round's replies, "
                     f"median over the rounds after the first) took {percentile(train, 50):.3f} s "
                     "per message")
        if age:
            text += (f"; a ClientApp process was {percentile(age, 50):.1f} s old when it replied "
                     "(`process_seconds`, same statistic)")
        lines += [text + ".", ""]
    return lines


def startup_lines(report: dict) -> list[str]:
    probes = report.get("clientapp_startup")
    if not probes:
        return []
    rows = [f"| `{name}` | {p['wall']:.2f} | {p['cpu']:.2f} | {fmt(p.get('max_rss_mb'), 0)} |"
            for name, p in probes.items()]
    return ["### (c): what a fresh ClientApp process pays before its handler runs", "",
            "Timed alone after the workloads (median of 3, nothing else of the benchmark "
            "running); every ClientApp message in (c) starts one such process.", "",
            "| what | wall s | CPU s | peak RSS MB |", "| --- | --- | --- | --- |", *rows, ""]


def reference_tables(report: dict) -> list[str]:
    lines: list[str] = []
    gossip = report["workloads"].get("gossip-digits")
    if gossip:
        r = gossip["ratios"]
        lines += [
            f"### gossip-digits: Gossip-PGA, {gossip['nodes']} nodes on a ring, period 4, "
            f"1 local step (batch 32) per iteration, {gossip['rounds']} iterations, digits ReLU MLP",
            "",
            *reference_rows(gossip, {
                "a": "(a) pure compute, no Flower = (d) reference simulator (`gossip_reference`)",
                "b": "(b) fedlocal, simulation, `evaluate_nodes=false`",
                "b_eval": "(b') fedlocal, simulation, `evaluate_nodes=true` (default)",
                "c": deployment_name(gossip, ", `evaluate_nodes=false`")},
                "iteration"),
            "",
            f"(b)/(a) = **{r['b_over_a']:.2f}x** per iteration, with `strategy.evaluate_nodes=false` "
            f"(target ≤ 3x: {'met' if gossip['targets']['sim_within_3x_pure'] else 'not met'})"
            + (f"; with the default `evaluate_nodes=true` (the server also evaluates all "
               f"{gossip['nodes']} node models every iteration) (b')/(a) = "
               f"**{r['b_eval_over_a']:.2f}x**" if "b_eval_over_a" in r else "")
            + ". (a) trains and mixes only (no evaluation); (b) also evaluates the mean model "
            "centrally every iteration (digits' 359 test images, about 0.01 s). samples/s: "
            f"{gossip['samples_per_round']} rows per iteration (16 nodes x 1 step x batch 32, "
            "nominal: a node with fewer than 32 examples takes all it has) / median seconds. "
            + deployment_ratio(gossip, "iteration"),
            "",
            "Memory of (b) at its peak, by process (RSS MB): " + breakdown(gossip["systems"]["b"]) + ".",
            "",
            *deployment_lines(report, gossip),
            per_round_line(gossip, ["a", "b", "b_eval", "c"]),
            "",
        ]
    clipped = report["workloads"].get("clipped-shakespeare")
    if clipped and "skipped" in clipped:
        lines += ["### clipped-shakespeare", "", f"Skipped: {clipped['skipped']}.", ""]
    elif clipped:
        lines += [
            f"### clipped-shakespeare: clipped FedAvg (CELGC), character LSTM on tiny Shakespeare, "
            f"{clipped['clients']} clients (IID), I = 4 local steps of batch 16, eta = 20, "
            f"gamma = 5, {clipped['rounds']} rounds",
            "",
            *reference_rows(clipped, {
                "a": "(a) pure compute, no Flower = (d) reference simulator (`fedavg_reference`)",
                "b": "(b) fedlocal, simulation",
                "c": deployment_name(clipped)}, "round"),
            "",
            f"(b)/(a) = **{clipped['ratios']['b_over_a']:.2f}x** per round (no target in the "
            "issue). Both evaluate the global model on the test set after every round. "
            f"samples/s: {clipped['samples_per_round']} sequences of 80 characters per round "
            "(8 clients x 4 steps x batch 16) / median seconds. " + deployment_ratio(clipped, "round"),
            "",
            "Memory of (b) at its peak, by process (RSS MB): " + breakdown(clipped["systems"]["b"]) + ".",
            "",
            *deployment_lines(report, clipped),
            per_round_line(clipped, ["a", "b", "c"]),
            "",
        ]
    return lines


def plot_scaling(scale: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = scale["points"]
    clients = [p["clients"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, key, marker in (("fedlocal, simulation", "sim", "o"),
                               ("pure compute (same sampled clients)", "pure", "s")):
        med = [p[key]["median"] for p in points]
        low = [m - p[key]["min"] for m, p in zip(med, points)]
        high = [p[key]["max"] - m for m, p in zip(med, points)]
        ax.errorbar(clients, med, yerr=[low, high], marker=marker, capsize=3, label=label)
        if key == "sim":
            for c, m, p in zip(clients, med, points):
                ax.annotate(f"{p['sim']['memory']['peak_rss_mb'] / 1024:.1f} GB RSS", (c, m),
                            textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_xlabel("clients (10 % sampled per round)")
    ax.set_ylabel("seconds per round (median; bars: min–max)")
    ax.set_title(f"FedAvg, Fashion-MNIST MLP, IID, 1 local epoch ({os.cpu_count()} cores)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def update_doc(table: str, commit: str) -> None:
    block = f"{BEGIN}\n<!-- written by `python -m bench.run`; edit outside these markers -->\n\n" \
            f"Measured at commit `{commit}`.\n\n{table}\n{END}"
    text = DOC.read_text() if DOC.is_file() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Latest results\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Full run: about 5 minutes on 2 cores (more when the machine is busy); "
        "--quick: about 2 minutes.")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of fedavg-fmnist (default 5; quick 2)")
    parser.add_argument("--clients", type=int, default=10, help="clients of fedavg-fmnist (default 10)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds, (a) once, scaling at 100 clients only with 2 rounds, 8 gossip "
                        "iterations without (b'), 3 clipped rounds; writes bench/results only")
    parser.add_argument("--scaling-clients", default=None,
                        help="comma-separated client counts (default 10,100,1000; quick 100)")
    parser.add_argument("--scaling-rounds", type=int, default=None,
                        help="rounds per scaling point (default 5; quick 2)")
    parser.add_argument("--gossip-rounds", type=int, default=None,
                        help="iterations (= rounds) of gossip-digits (default 30; quick 8)")
    parser.add_argument("--shakespeare-rounds", type=int, default=None,
                        help="rounds of clipped-shakespeare (default 8; quick 3)")
    parser.add_argument("--shakespeare", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare"
                                                     / "input.txt"),
                        help="tiny-shakespeare input.txt for clipped-shakespeare (default "
                        "<repo>/../shared/data/tinyshakespeare/input.txt; skipped if absent)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="train.device of every run, (a) included (default: the config's, "
                        "auto). With cuda each simulated client gets a 1/clients share of the GPU "
                        "(client-resources-num-gpus): Ray hides the GPU from clients without one, "
                        "so in simulation auto trains on the CPU")
    parser.add_argument("--pure-threads", type=int, default=1,
                        help="torch threads for (a) (default 1, as each simulated client gets 1 CPU)")
    parser.add_argument("--app-dir", type=Path, default=REPO,
                        help="the fedlocal app folder that (b) and the scaling runs start (default: "
                        "this repository), to try an app change on a copy; (a) always runs this "
                        "repository's code. Implies --no-docs when not this repository")
    parser.add_argument("--deployment", action="store_true",
                        help="also measure (c), fedlocal on server.launch.LocalDeployment (a SuperLink "
                        "and one SuperNode process per client, each with a warm worker; slow: every "
                        "message still starts a ClientApp process)")
    parser.add_argument("--deployment-rounds", type=int, default=None,
                        help="rounds of (c) in every workload (default: 4, or the workload's "
                        "rounds if fewer; a deployed round costs seconds)")
    parser.add_argument("--deployment-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for every Flower process of (c), on top of "
                        f"{' '.join(f'{k}={v}' for k, v in DEPLOYMENT_ENV.items())} and a fresh "
                        "FEDLOCAL_CACHE (repeatable; e.g. OMP_NUM_THREADS=1 for an A/B)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip (d), the quickstart-style baseline (for quick A/B runs of the "
                        "app); implies --no-docs")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not update docs/benchmarks.md and docs/figures/scaling.png (implied by "
                        "--workloads with fewer than all workloads, --no-baseline and --app-dir)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.scaling_rounds = args.scaling_rounds or (2 if args.quick else 5)
    args.gossip_rounds = args.gossip_rounds or (8 if args.quick else 30)
    args.shakespeare_rounds = args.shakespeare_rounds or (3 if args.quick else 8)
    clients = args.scaling_clients or ("100" if args.quick else "10,100,1000")
    args.scaling_clients = [int(c) for c in clients.split(",") if c.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if any("=" not in item for item in args.deployment_env):
        parser.error("--deployment-env takes KEY=VALUE")
    args.deployment_env = dict(item.split("=", 1) for item in args.deployment_env)
    args.app_dir = args.app_dir.resolve()
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    if args.app_dir != REPO or args.no_baseline or set(args.workloads) != set(WORKLOADS):
        args.no_docs = True  # the docs show only complete runs of this repository
    if min(args.rounds, args.scaling_rounds, args.gossip_rounds, args.shakespeare_rounds,
           args.deployment_rounds or 2) < 2:
        parser.error("--rounds, --scaling-rounds, --gossip-rounds, --shakespeare-rounds and "
                     "--deployment-rounds must be >= 2 (the first round is start-up)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)
    started = datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    report = {"meta": {
        "started": started.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "load_before": os.getloadavg(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }, "workloads": {}}
    start = time.perf_counter()
    for name in args.workloads:
        report["workloads"][name] = WORKLOADS[name](args)
    if args.deployment and any("c" in w.get("systems", {}) and w["systems"]["c"].get("available", True)
                               for w in report["workloads"].values()):
        log("(c): timing a ClientApp process's start-up alone")
        report["clientapp_startup"] = clientapp_startup()
    report["meta"]["seconds"] = time.perf_counter() - start
    report["meta"]["load_after"] = os.getloadavg()
    table = markdown(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{stamp}.md").write_text(f"# fedlocal benchmark {stamp}\n\n{table}")
    scale = report["workloads"].get("scaling-fmnist")
    if scale:
        plot_scaling(scale, RESULTS / f"{stamp}-scaling.png")
    if not (args.quick or args.no_docs):
        update_doc(table, report["meta"]["commit"])
        if scale:
            plot_scaling(scale, FIGURE)
    print(table)
    log(f"results in {RESULTS / stamp}.json / .md ({report['meta']['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
