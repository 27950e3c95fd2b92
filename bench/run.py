"""fedlocal's benchmark: every job side by side in one run, results as JSON + markdown.

    python -m bench.run            # the full benchmark (about 5 minutes on 2 cores)
    python -m bench.run --quick    # a small version (about 2 minutes)

The jobs (``--workloads``, comma-separated), each also a command of its own with the same
options (``python -m bench.<module> --help``):

``fedavg-fmnist``        ``bench.fedavg_compare``: FedAvg on Fashion-MNIST against the
                         same steps without Flower and a quickstart-style Flower app
``scaling-fmnist``       ``bench.scaling``: 10, 100, 1000 simulated clients
``gossip-digits``        ``bench.gossip_compare``: Gossip-PGA, 16 nodes on a ring
``clipped-shakespeare``  ``bench.clipped_compare``: clipped FedAvg, LSTM, tiny Shakespeare

The systems they measure (``engine``, ``engine_again``, ``limit``, ``simulation``,
``simulation_eval_nodes``, ``pfl``, ``deployment_warm``, ``quickstart_baseline``) are
described and run in ``bench.systems``; the markdown is ``bench.report``'s and each job's
``markdown``.

Writes ``bench/results/<timestamp>.json`` and ``.md``; a full run (all the workloads, not
``--quick``) also copies the table, with the commit it measured, into docs/benchmarks.md
and draws docs/figures/scaling.png. The last lines printed are one per workload run, for
scripts (``summary_lines``)::

    summary fedavg-fmnist: fedlocal/limit=1.47 fedlocal/pfl=0.88
    summary gossip-digits: fedlocal/limit=n/a fedlocal/pfl=n/a

fedlocal is the ``simulation`` system's median round, limit and pfl those systems'; a job
names which of its results the line is about (``peer_ratios``; scaling-fmnist: the
1000-client point, else its largest), ``n/a`` where a row was not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from bench import clipped_compare, fedavg_compare, gossip_compare, scaling
from bench.common import REPO, RESULTS, log
from bench.report import git_commit, machine, markdown, update_doc
from bench.systems import DEPLOYMENT_ENV, clientapp_startup

# The workloads' configs, for the modules that still take them from here (bench.checkpoint_cost).
CLIPPED_SHAKESPEARE = clipped_compare.CLIPPED_SHAKESPEARE
FEDAVG_FMNIST = fedavg_compare.FEDAVG_FMNIST
GOSSIP_DIGITS, GOSSIP_NODES = gossip_compare.GOSSIP_DIGITS, gossip_compare.GOSSIP_NODES

# Every job, in the order of the report's sections. A job is a module with NAME (its
# workload), QUICK (what --quick does to it), DEPLOYMENT (whether it takes --deployment),
# add_arguments(parser), finish_args(args, parser), run(args) -> result and
# markdown(report, result) -> lines.
JOBS = (fedavg_compare, scaling, gossip_compare, clipped_compare)
WORKLOADS = {job.NAME: job.run for job in JOBS}


def parse_args(argv=None, workload: str | None = None):
    """``bench.run``'s command line; with ``workload``, that job's own (its options and
    the shared ones, no ``--workloads``)."""
    jobs = [job for job in JOBS if job.NAME == workload] if workload else list(JOBS)
    if not jobs:
        raise ValueError(f"unknown workload {workload!r}; choose from {list(WORKLOADS)}")
    doc = jobs[0].__doc__ if workload else __doc__
    parser = argparse.ArgumentParser(
        prog=f"python -m {jobs[0].__name__}" if workload else "python -m bench.run",
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=None if workload else "Full run: about 5 minutes on 2 cores (more when the "
        "machine is busy); --quick: about 2 minutes.")
    if not workload:
        parser.add_argument("--workloads", default=",".join(WORKLOADS),
                            help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all)")
    for job in jobs:
        job.add_arguments(parser)
    parser.add_argument("--quick", action="store_true",
                        help="; ".join(job.QUICK for job in jobs) + "; writes bench/results only")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="train.device of every run, engine included (default: the config's, "
                        "auto). With cuda each simulated client gets a 1/clients share of the GPU "
                        "(client-resources-num-gpus): Ray hides the GPU from clients without one, "
                        "so in simulation auto trains on the CPU")
    parser.add_argument("--engine-threads", "--pure-threads", dest="engine_threads", type=int,
                        default=1, help="torch threads for engine (default 1, as each simulated "
                        "client gets 1 CPU; --pure-threads is its older name)")
    parser.add_argument("--pfl-threads", type=int, default=0,
                        help="torch threads of pfl-research's one process, the pfl system "
                        "(default 0: one per core; pfl itself runs no other parallelism here)")
    parser.add_argument("--app-dir", type=Path, default=REPO,
                        help="the fedlocal app folder that simulation and the scaling runs start "
                        "(default: this repository), to try an app change on a copy; engine always "
                        "runs this repository's code. Implies --no-docs when not this repository")
    if any(job.DEPLOYMENT for job in jobs):
        parser.add_argument("--deployment", action="store_true",
                            help="also measure deployment_warm, fedlocal on "
                            "deploy.launch.LocalDeployment (a SuperLink and one SuperNode process "
                            "per client, each with a warm worker; slow: every message still "
                            "starts a ClientApp process)")
        parser.add_argument("--deployment-rounds", type=int, default=None,
                            help="rounds of deployment_warm in every workload (default: 4, or the "
                            "workload's rounds if fewer; a deployed round costs seconds)")
        parser.add_argument("--deployment-env", action="append", default=[], metavar="KEY=VALUE",
                            help="an environment variable for every Flower process of "
                            f"deployment_warm, on top of "
                            f"{' '.join(f'{k}={v}' for k, v in DEPLOYMENT_ENV.items())} and a "
                            "fresh FEDLOCAL_CACHE (repeatable; e.g. OMP_NUM_THREADS=1 for an A/B)")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not update docs/benchmarks.md and docs/figures/scaling.png "
                        "(implied by fewer than all workloads, --no-baseline and --app-dir)")
    args = parser.parse_args(argv)
    if workload:
        args.workloads = [workload]
    else:
        args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
        unknown = [w for w in args.workloads if w not in WORKLOADS]
        if unknown:
            parser.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    args.deployment = getattr(args, "deployment", False)
    args.deployment_rounds = getattr(args, "deployment_rounds", None)
    env = getattr(args, "deployment_env", [])
    if any("=" not in item for item in env):
        parser.error("--deployment-env takes KEY=VALUE")
    args.deployment_env = dict(item.split("=", 1) for item in env)
    if (args.deployment_rounds or 2) < 2:
        parser.error("--deployment-rounds must be >= 2 (the first round is start-up)")
    args.app_dir = args.app_dir.resolve()
    for job in jobs:
        job.finish_args(args, parser)
    if args.app_dir != REPO or set(args.workloads) != set(WORKLOADS):
        args.no_docs = True  # the docs show only complete runs of this repository
    return args


def main(argv=None, workload: str | None = None) -> int:
    """Run the workloads of ``bench.run`` (or the one job ``workload``) and write the
    report."""
    args = parse_args(argv, workload)
    os.chdir(REPO)
    started = datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    prog = "python -m " + (next(j.__name__ for j in JOBS if j.NAME == workload) if workload
                           else "bench.run")
    report = {"meta": {
        "started": started.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": f"{prog} " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "load_before": os.getloadavg(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }, "workloads": {}}
    start = time.perf_counter()
    for name in args.workloads:
        report["workloads"][name] = WORKLOADS[name](args)
    if args.deployment and any("deployment_warm" in w.get("systems", {})
                               and w["systems"]["deployment_warm"].get("available", True)
                               for w in report["workloads"].values()):
        log("deployment_warm: timing a ClientApp process's start-up alone")
        report["clientapp_startup"] = clientapp_startup()
    report["meta"]["seconds"] = time.perf_counter() - start
    report["meta"]["load_after"] = os.getloadavg()
    table = markdown(report, JOBS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{stamp}.md").write_text(f"# fedlocal benchmark {stamp}\n\n{table}")
    scale = report["workloads"].get(scaling.NAME)
    if scale:
        scaling.plot(scale, RESULTS / f"{stamp}-scaling.png")
    if not (args.quick or args.no_docs):
        update_doc(table, report["meta"]["commit"])
        if scale:
            scaling.plot(scale, scaling.FIGURE)
    print(table)
    log(f"results in {RESULTS / stamp}.json / .md ({report['meta']['seconds']:.0f} s)")
    for line in summary_lines(report):
        print(line)
    return 0


def summary_lines(report: dict) -> list[str]:
    """One line per workload in the report: fedlocal (``simulation``) over ``limit`` and
    over ``pfl``, median seconds per round, from the job's ``peer_ratios`` (``n/a`` where
    the job has none or a row was not run)."""
    jobs = {job.NAME: job for job in JOBS}
    lines = []
    for name, result in report["workloads"].items():
        peer_ratios = getattr(jobs.get(name), "peer_ratios", None)
        ratios = peer_ratios(result) if peer_ratios and result else {}
        limit, pfl = (ratios.get(f"simulation_over_{key}") for key in ("limit", "pfl"))
        lines.append(f"summary {name}: fedlocal/limit={'n/a' if limit is None else f'{limit:.2f}'} "
                     f"fedlocal/pfl={'n/a' if pfl is None else f'{pfl:.2f}'}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
