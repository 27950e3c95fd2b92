"""The systems the benchmark jobs compare, how each is started and what is measured of it.

Every job runs some of these on its workload and files each result under its name (in
the JSON, the tables and the logs):

``engine``
    the workload in one process without Flower: fedlocal's engine (``engine.run``, the same
    client and server halves as the Flower strategies), timed round by round by
    ``bench.engine_timing`` in a subprocess of its own, so that its memory is measured
    alone. ``engine_again``: the same, run once more at the end of fedavg-fmnist, so that
    drift over the run shows.
``simulation``
    fedlocal in Flower's simulation engine, on a private simulation SuperLink
    (``bench.simulation.AppSimulation``), one CPU per simulated client.
    ``simulation_eval_nodes``: gossip-digits with ``strategy.evaluate_nodes=true``.
``deployment_warm``
    fedlocal on the local deployment (``--deployment`` only):
    ``deploy.launch.LocalDeployment``, a SuperLink and one SuperNode process per client
    over gRPC on loopback, where every ClientApp message runs in a fresh
    ``flwr-clientapp`` process that hands it to the node's warm worker (``client.worker``;
    a worker counts as its SuperExec's child in the process accounting). A deployed
    round costs seconds, so it runs ``--deployment-rounds`` rounds (default: 4, or the
    workload's rounds if fewer), with ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.2``
    (``DEPLOYMENT_ENV``) and a fresh split cache (``FEDLOCAL_CACHE``) per run. Its
    processes' lives and CPU seconds are recorded, and a ClientApp process's start-up is
    timed on its own afterwards (``clientapp_startup``).
``quickstart_baseline``
    the quickstart-style app (``bench/quickstart_baseline``) in the simulation engine.
``limit``
    the machine's limit (``bench.limit``): the same SGD steps as ``engine``, each round's
    clients spread over one long-lived worker process per core (one torch thread each),
    the server's step and the central evaluation; the physical anchor.
``pfl``
    Apple's pfl-research (``bench.pfl_peer``), a peer simulator, fed fedlocal's splits,
    model, settings and sampled clients; skipped with a note where ``pfl`` is not
    installed (``pip install -e ".[bench]"``).

Each runner returns the round statistics of ``round_stats`` plus start-up, wall seconds,
memory (``bench.procmem``) and the final test accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, log
from bench.procmem import TreeMemory, percentile

BASELINE_APP = REPO / "bench" / "quickstart_baseline"
# Added to every Flower process's environment in deployment_warm: SuperExec looks for new
# ClientApp tasks every 0.2 s instead of Flower's 1 s (../shared/ENVIRONMENT.md: a good
# value on small hosts). Each deployment_warm run also gets FEDLOCAL_CACHE, a fresh
# split-cache folder.
DEPLOYMENT_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}


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


# ----------------------------------------------------------------------------- engine

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


def run_engine(overrides: dict, clients: int, rounds: int, threads: int, evaluate: bool = True,
               samples: int | None = None) -> dict:
    """``engine``: the workload in fedlocal's one-process engine (``bench.engine_timing``:
    ``engine.run`` timed round by round), in a subprocess of its own. Which clients a round
    trains comes from the config (``strategy.fraction_train``, ``strategy.min_train_nodes``).
    ``evaluate``: test the global model after every round, as the ServerApp does;
    ``samples``: a round's samples for samples/s (default: the first round's examples)."""
    result, wall, memory = run_measured(
        "bench.engine_timing", ["--clients", str(clients), "--rounds", str(rounds), "--threads",
                                str(threads), "--overrides", json.dumps(overrides),
                                *(["--evaluate"] if evaluate else [])])
    return {**_timed(result, wall, memory, samples),
            "final_train_loss": result.get("final_train_loss"),
            "torch_threads": result["torch_threads"], "device": result["device"]}


def _timed(result: dict, wall: float, memory, samples: int | None) -> dict:
    """What ``engine`` and ``limit`` report alike: round statistics (samples/s from the
    first round's examples unless given), start-up, wall time, memory and accuracy."""
    records = result["rounds"]
    if samples is None:
        samples = records[0]["examples"] if records else None
    return {
        **round_stats(result["round_seconds"], samples),
        "startup": result["startup"],
        "wall": wall,
        "memory": memory.as_dict(),
        "examples_per_round": [r["examples"] for r in records],
        "train_seconds": [r["train_seconds"] for r in records],
        "final_test_accuracy": result.get("final_test_accuracy"),
    }


def run_limit(overrides: dict, clients: int, rounds: int, samples: int | None = None,
              processes: int | None = None) -> dict:
    """``limit``: ``bench.limit`` in a subprocess of its own (its workers are its
    children, so the memory is the whole tree's)."""
    result, wall, memory = run_measured(
        "bench.limit", ["--clients", str(clients), "--rounds", str(rounds), "--evaluate",
                        "--processes", str(processes or 0), "--overrides", json.dumps(overrides)])
    return {**_timed(result, wall, memory, samples), "processes": result["processes"],
            "torch_threads": result["torch_threads"]}


def pfl_available() -> bool:
    from bench.pfl_peer import available

    return available()


def run_pfl(overrides: dict, clients: int, rounds: int, samples: int | None = None,
            threads: int = 0) -> dict:
    """``pfl``: ``bench.pfl_peer`` in a subprocess of its own, or a note where pfl-research
    is not installed."""
    from bench.pfl_peer import NOTE, available

    if not available():
        return {"available": False, "note": NOTE}
    result, wall, memory = run_measured(
        "bench.pfl_peer", ["--clients", str(clients), "--rounds", str(rounds), "--threads",
                           str(threads), "--overrides", json.dumps(overrides)])
    if samples is None:
        samples = result["examples_per_round"][0] if result["examples_per_round"] else None
    return {
        **round_stats(result["round_seconds"], samples),
        "startup": result["startup"],
        "wall": wall,
        "memory": memory.as_dict(),
        "examples_per_round": result["examples_per_round"],
        "final_test_accuracy": result.get("final_test_accuracy"),
        "test_accuracy": result.get("test_accuracy"),
        "torch_threads": result["torch_threads"],
        "pfl_version": result.get("pfl"),
    }


# ----------------------------------------------------------------------------- fedlocal

def run_fedlocal(overrides: dict, clients: int, rounds: int, examples: int | None,
                 app_dir: Path = REPO, deployment: bool = False,
                 deployment_env: dict | None = None) -> dict:
    """``simulation``: fedlocal on a private simulation SuperLink, or ``deployment_warm``
    with ``deployment`` on a SuperLink and ``clients`` SuperNode processes; round times
    from metrics.jsonl."""
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


def deployment_available() -> bool:
    """Whether this checkout has ``deploy.launch.LocalDeployment`` for deployment_warm."""
    from bench.simulation import deployment_available as available

    return available()


def deployment_rounds(args, workload_rounds: int) -> int:
    """Rounds of deployment_warm: ``--deployment-rounds``, else 4 or the workload's rounds
    if fewer."""
    return args.deployment_rounds or min(4, workload_rounds)


def run_deployment_warm(args, overrides: dict, clients: int, rounds: int,
                        examples: int | None) -> dict:
    """``deployment_warm``: ``run_fedlocal`` on the local deployment (with
    ``--deployment-env``), logged."""
    log(f"deployment_warm: fedlocal in the local deployment, a SuperLink + {clients} SuperNode "
        f"processes with warm workers, {rounds} rounds")
    system = run_fedlocal(overrides, clients, rounds, examples, args.app_dir, deployment=True,
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


# ----------------------------------------------------------------------------- the baseline

def run_quickstart_baseline(data_dir: Path, clients: int, rounds: int,
                            examples: int | None) -> dict:
    """``quickstart_baseline``: the quickstart-style app; round times from the times its
    evaluate_fn wrote."""
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
