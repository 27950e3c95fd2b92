"""Deployed round latency (issue #7, part 5): seconds per round of fedlocal on the local
multi-process deployment (SuperLink + SuperNodes over gRPC on loopback), next to a
do-nothing ClientApp (``bench/noop_app``: the runtime's own floor), for a ~10k and a ~1M
parameter model and 2 and 4 SuperNodes, under two launch settings:

``before``
    fedlocal before this work: Flower's defaults (below) and every ClientApp message
    loading the data set and partitioning it again (``FEDLOCAL_CACHE=off``).
``flower``
    Flower 1.39's defaults: the ServerApp's grid polls replies every 3 s
    (``FEDLOCAL_GRID_POLL=3``), SuperExec polls for new tasks every 1 s, torch uses one
    thread per core in every ClientApp process.
``cold``
    fedlocal's launch settings without patching Flower: replies polled every 0.1 s
    (``server.grid.PollingGrid``), ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.2``,
    ``OMP_NUM_THREADS`` = cores / SuperNodes (``deploy.launch.deployment_env``), but every
    message still imports torch and builds the model in its own ClientApp process
    (node config ``warm-worker=0``).
``tuned``
    What fedlocal and its launcher do by default: ``cold`` plus each node's warm worker
    (``client.worker``), which keeps torch, the model and the data resident, so that the
    ClientApp process of a message imports only flwr.

Every setting uses fedlocal's one message phase per round (central evaluation); all but
``before`` the ClientApp's cached client split (no data set or partitioner import after a
node's first message). Per configuration: the median s/round over the rounds after the first, and
the clients' own compute (``train_seconds``, measured inside ``local_train``) and the age
of the ClientApp process when it replies (``process_seconds``: interpreter, imports,
setup and compute of that one message)::

    python -m bench.latency                 # flower, cold and tuned (about 25 minutes on 2 cores)
    python -m bench.latency --nodes 2 --models small --settings tuned

Writes ``bench/results/latency-<timestamp>.json`` and ``.md``; ``--doc`` also puts the
table, with the commit it measured, into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path

from bench.common import DOC, RESULTS, log
from bench.procmem import percentile
from bench.report import git_commit
from deploy.launch import LocalDeployment

NOOP_APP = Path(__file__).resolve().parent / "noop_app"
BEGIN, END = "<!-- latency:begin -->", "<!-- latency:end -->"
# digits (8x8 inputs, 10 classes), ReLU MLP of depth 2: width 64 -> 9,034 parameters,
# width 960 -> 993,610.
MODELS = {"small": 64, "large": 960}
FLOWER_DEFAULTS = {"FEDLOCAL_GRID_POLL": "3", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1",
                   "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
# name: (environment, warm_worker for LocalDeployment)
SETTINGS = {
    "before": ({**FLOWER_DEFAULTS, "FEDLOCAL_CACHE": "off"}, 0),
    "flower": (FLOWER_DEFAULTS, 0),
    "cold": ({}, 0),
    "tuned": ({}, 120),  # what LocalDeployment and the ServerApp do by default
}


def num_parameters(width: int) -> int:
    import tasks
    from conf import load_config

    cfg = load_config({"model.width": width})
    return sum(p.numel() for p in tasks.make_model(cfg, tasks.load_task(cfg)).parameters())


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def measure(setting: str, nodes: int, width: int, rounds: int) -> dict:
    """fedlocal and the do-nothing app on one fresh deployment each."""
    out: dict = {"setting": setting, "nodes": nodes, "width": width}
    env, warm_worker = SETTINGS[setting]
    with tempfile.TemporaryDirectory(prefix="fedlocal-latency-") as tmp:
        tmp = Path(tmp)
        with LocalDeployment(nodes, flwr_home=tmp / "fedlocal", env=env,
                             warm_worker=warm_worker) as deployment:
            status, output = deployment.run({
                "run.rounds": rounds, "run.output_dir": str(tmp / "runs"), "run.name": "r",
                "model.width": width, "run.save_model": False,
            })
        rows = records(tmp / "runs" / "r" / "metrics.jsonl")
        if status != "finished:completed":
            raise RuntimeError(f"fedlocal run {status}:\n{output[-3000:]}")
        out["fedlocal"] = [r["seconds"] for r in rows if r["round"] > 0]
        out["compute"] = [r.get("train_seconds", 0.0) for r in rows if r["round"] > 0]
        out["fedlocal_process"] = [r.get("process_seconds", 0.0) for r in rows if r["round"] > 0]
        metrics = tmp / "noop.jsonl"
        with LocalDeployment(nodes, flwr_home=tmp / "noop", env=env, app_dir=NOOP_APP,
                             warm_worker=0) as deployment:
            status, output = deployment.run_flwr([], {
                "rounds": rounds, "num-floats": num_parameters(width), "min-nodes": nodes,
                "fast-poll": setting in ("cold", "tuned"), "metrics-file": str(metrics),
            }, timeout=1800, echo=False)
        if status != "finished:completed":
            raise RuntimeError(f"do-nothing run {status}:\n{output[-3000:]}")
        out["noop"] = [r["seconds"] for r in records(metrics)]
        out["noop_process"] = [r["process_seconds"] for r in records(metrics)]
    after = slice(1, None)  # the first round also pays start-up (imports, data, connections)
    out["fedlocal_median"] = percentile(out["fedlocal"][after], 50)
    out["noop_median"] = percentile(out["noop"][after], 50)
    out["compute_median"] = percentile(out["compute"][after], 50)
    out["fedlocal_process_median"] = percentile(out["fedlocal_process"][after], 50)
    out["noop_process_median"] = percentile(out["noop_process"][after], 50)
    out["ratio"] = out["fedlocal_median"] / (out["noop_median"] + out["compute_median"])
    return out


def table(rows: list[dict], params: dict[int, int]) -> str:
    lines = [
        "| setting | SuperNodes | parameters | fedlocal s/round | do-nothing s/round | "
        "client compute s | fedlocal / (do-nothing + compute) | ClientApp process s: fedlocal | "
        "do-nothing |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['nodes']} | {params[r['width']]:,} | {r['fedlocal_median']:.2f} | "
            f"{r['noop_median']:.2f} | {r['compute_median']:.2f} | {r['ratio']:.2f} | "
            f"{r['fedlocal_process_median']:.2f} | {r['noop_process_median']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", default="2,4")
    parser.add_argument("--models", default="small,large", help=f"of {sorted(MODELS)}")
    parser.add_argument("--settings", default="flower,cold,tuned", help=f"of {sorted(SETTINGS)}")
    parser.add_argument("--doc", action="store_true", help="also write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    widths = [MODELS[m] for m in args.models.split(",")]
    params = {w: num_parameters(w) for w in widths}
    rows = []
    for setting in args.settings.split(","):
        for nodes in (int(n) for n in args.nodes.split(",")):
            for width in widths:
                log(f"latency: {setting}, {nodes} SuperNodes, {params[width]:,} parameters")
                rows.append(measure(setting, nodes, width, args.rounds))
                r = rows[-1]
                log(f"  fedlocal {r['fedlocal_median']:.2f} s/round, do-nothing {r['noop_median']:.2f}, "
                    f"compute {r['compute_median']:.2f}, ratio {r['ratio']:.2f}")
    commit = git_commit()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"latency-{stamp}.json").write_text(json.dumps(
        {"commit": commit, "rounds": args.rounds, "parameters": params, "rows": rows}, indent=1))
    md = (f"Measured at commit `{commit}` with `python -m bench.latency` ({args.rounds} rounds per "
          f"run; medians over rounds 2..{args.rounds}).\n\n{table(rows, params)}\n")
    (RESULTS / f"latency-{stamp}.md").write_text(md)
    print(md)
    if args.doc:
        doc = DOC.read_text()
        block = f"{BEGIN}\n{md}{END}"
        if BEGIN in doc:
            doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
        else:
            doc += f"\n## Deployed round latency\n\n{block}\n"
        DOC.write_text(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
