"""Peak memory of a cohort run: ``data.num_clients`` logical clients on a few SuperNodes
in Flower's simulation (issue 16's target: 10,000 fmnist clients on 10 SuperNodes under
4 GB peak PSS). The whole process tree of the launcher (SuperLink, simulation, Ray and its
workers) is sampled from /proc (``bench.procmem.TreeMemory``)::

    python -m bench.cohort_memory --clients 10000 --supernodes 10 --rounds 2 --fraction 0.1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.procmem import TreeMemory

GB = 1024 ** 3


def measure(clients: int, supernodes: int, rounds: int, fraction: float, output_dir: str) -> dict:
    config = (f"task.name='fmnist' data.partition='iid' data.num_clients={clients} "
              f"strategy.fraction_train={fraction} strategy.min_available_nodes={supernodes} "
              f"run.rounds={rounds} run.output_dir='{output_dir}' run.name='cohort-memory'")
    command = [sys.executable, "-m", "deploy.launch", "--num-supernodes", str(supernodes),
               "--run-config", config]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = TreeMemory([process.pid])
    with memory:
        output, _ = process.communicate()
    return {"clients": clients, "supernodes": supernodes, "rounds": rounds, "fraction": fraction,
            "returncode": process.returncode, "seconds": time.perf_counter() - started,
            "peak_pss_gb": memory.peak_pss / GB, "peak_rss_gb": memory.peak_rss / GB,
            "rss_mb_at_peak_by_program": {k: round(v) for k, v in sorted(
                memory.at_peak.items(), key=lambda item: -item[1])},
            "tail": output[-1500:]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--supernodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--output-dir", default="/tmp/fedlocal-cohort-memory")
    args = parser.parse_args(argv)
    result = measure(args.clients, args.supernodes, args.rounds, args.fraction, args.output_dir)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
