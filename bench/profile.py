"""Where fedlocal's per-round time goes in Flower's simulation engine (py-spy).

    pip install py-spy
    python -m bench.profile --rounds 8 --clients 10

Runs the fedavg-fmnist workload of ``bench.fedavg_compare`` on a private SuperLink and, once the
first round is recorded (start-up excluded), attaches ``py-spy record`` to the ServerApp
process (``flwr-simulation``) and to every Ray ``ClientAppActor``. It then prints, per
process kind, the share of samples spent inside a few named functions (inclusive) and
the functions with the most samples of their own, as shares of the samples that have a
Python stack (py-spy also reports running threads it cannot unwind, with an empty stack;
they are counted apart). py-spy samples only threads that are running (not idle), so
``busy`` = samples / (rate x profiled seconds) is how much of the wall time a process
kept a core busy in Python-visible work. Raw stacks are kept in ``bench/results/profile-<time>/``.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from bench.common import REPO, RESULTS
from bench.fedavg_compare import FEDAVG_FMNIST
from bench.procmem import descendants

# (label, function, file): inclusive sample shares reported for these. py-spy names a
# frame "function (path:line)", with the path relative to its sys.path entry, so the app's
# files may appear as "app.py" or "client/app.py": match the file by its end.
PROBES = [
    ("ClientApp train handler (client/app.py)", "train", "app.py"),
    ("  local_train: the SGD steps (client/train.py)", "local_train", "train.py"),
    ("    autograd backward", "_engine_run_backward", "graph.py"),
    ("  _setup: config, data, split, model (client/app.py)", "_setup", "app.py"),
    ("    client_split (tasks/__init__.py)", "client_split", "__init__.py"),
    ("      partition_indices (tasks/partition.py)", "partition_indices", "partition.py"),
    ("    load_task (tasks/__init__.py)", "load_task", "__init__.py"),
    ("    load_state_dict", "Module.load_state_dict", "module.py"),
    ("  ArrayRecord(...) of the reply", "ArrayRecord.__init__", "arrayrecord.py"),
    ("  to_torch_state_dict of the received model", "ArrayRecord.to_torch_state_dict", "arrayrecord.py"),
    ("ServerApp central_evaluate (server/app.py)", "central_evaluate", "app.py"),
    ("  tasks.evaluate", "evaluate", "__init__.py"),
    ("ServerApp aggregate_train", "aggregate_train", "fedavg.py"),
    ("ServerApp configure_train", "configure_train", "fedavg.py"),
    ("Grid send_and_receive (incl. its 0.1 s pull sleeps)", "InMemoryGrid.send_and_receive",
     "inmemory_grid.py"),
]


def matches(frame: str, function: str, file: str) -> bool:
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    named = name == function or name.endswith("." + function)  # methods, closures
    return named and (path == file or path.endswith("/" + file))


def kind_of(pid: int) -> str | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if "flwr-simulation" in cmd:
        return "serverapp"
    if "ClientAppActor" in cmd:
        return "actor"
    return None


def summarize(files: dict[int, tuple[str, Path]]) -> dict:
    """Inclusive shares of the probes and top self-time frames, per process kind."""
    by_kind: dict[str, dict] = {}
    for pid, (kind, path) in files.items():
        if not path.is_file():
            continue
        entry = by_kind.setdefault(kind, {"pids": [], "total": 0, "no_stack": 0,
                                          "probes": collections.Counter(),
                                          "self": collections.Counter()})
        entry["pids"].append(pid)
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            if not stack.strip():  # a thread py-spy saw running but could not unwind
                entry["no_stack"] += n
                continue
            entry["total"] += n
            frames = stack.split(";")
            for label, function, file in PROBES:
                if any(matches(f, function, file) for f in frames):
                    entry["probes"][label] += n
            entry["self"][frames[-1].split(" (")[0] + " (" + frames[-1].split(" (")[-1]] += n
    out = {}
    for kind, entry in by_kind.items():
        total = max(entry["total"], 1)
        out[kind] = {
            "pids": entry["pids"],
            "samples": entry["total"],
            "samples_without_python_stack": entry["no_stack"],
            "probes": {label: entry["probes"][label] / total for label, _, _ in PROBES
                       if entry["probes"][label]},
            "top_self": [(frame, n / total) for frame, n in entry["self"].most_common(15)],
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--skip-rounds", type=int, default=1,
                        help="start profiling after this many rounds are recorded (default 1)")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--run-config", default="{}",
                        help="extra fedlocal overrides as JSON, e.g. '{\"data.partition\": \"iid\"}'")
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    from bench.simulation import AppSimulation

    out_dir = RESULTS / f"profile-{datetime.now():%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True)
    files: dict[int, tuple[str, Path]] = {}
    spies: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="fedlocal-profile-") as tmp:
        config = {**FEDAVG_FMNIST, **json.loads(args.run_config), "run.rounds": args.rounds,
                  "run.output_dir": tmp, "run.name": "profile", "run.save_model": False}
        metrics = Path(tmp) / "profile" / "metrics.jsonl"
        with AppSimulation() as sim:
            result = {}
            runner = threading.Thread(target=lambda: result.update(
                run=sim.run_app(REPO, config, num_supernodes=args.clients)))
            runner.start()
            def recorded() -> int:
                return len(metrics.read_text().splitlines()) if metrics.is_file() else 0

            while runner.is_alive() and recorded() < args.skip_rounds:
                time.sleep(0.1)
            started = time.perf_counter()
            while runner.is_alive():  # attach to every ServerApp / actor process, once
                for pid in descendants([sim.process.pid]):
                    kind = kind_of(pid)
                    if kind and pid not in files:
                        path = out_dir / f"{kind}-{pid}.txt"
                        files[pid] = (kind, path)
                        spies.append(subprocess.Popen(
                            ["py-spy", "record", "--pid", str(pid), "--rate", str(args.rate),
                             "--format", "raw", "--nonblocking", "--output", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                time.sleep(0.5)
            runner.join()
            profiled = time.perf_counter() - started
            for spy in spies:  # they stop when their process exits; make sure, by PID
                try:
                    spy.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    spy.terminate()
                    spy.wait(timeout=10)
        run = result["run"]
        records = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    summary = {"rounds": [r["seconds"] for r in records], "profiled_seconds": profiled,
               "skip_rounds": args.skip_rounds, "clients": args.clients,
               "status": run.status, "kinds": summarize(files)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"round seconds: {', '.join(f'{s:.2f}' for s in summary['rounds'])} "
          f"(profiled from the end of round {args.skip_rounds}, {profiled:.1f} s)")
    for kind, entry in summary["kinds"].items():
        busy = entry["samples"] / (args.rate * profiled * len(entry["pids"]))
        print(f"\n== {kind} ({len(entry['pids'])} processes, {entry['samples']} samples with a "
              f"Python stack, i.e. busy {busy:.0%} of the profiled wall time each on average; "
              f"{entry['samples_without_python_stack']} more without one, left out)")
        for label, share in entry["probes"].items():
            print(f"  {share:6.1%}  {label}")
        print("  top frames (own samples):")
        for frame, share in entry["top_self"]:
            print(f"  {share:6.1%}  {frame}")
    print(f"\nraw stacks and summary.json in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
