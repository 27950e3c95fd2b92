"""The Gossip-PGA experiment (issue 4) on the reference simulator, with figures.

n = 16 nodes, digits split Dirichlet(alpha = 0.1), ReLU MLP, one SGD step per iteration;
ring and static exponential graphs; H in {4, 8, 16}; Gossip SGD, Local SGD (W = I, same
H), Gossip-PGA, Gossip-AGA (H_init = H, our rule) and parallel SGD; several seeds::

    python -m experiments.gossip_pga                      # full sweep (~15 min, 2 cores)
    python -m experiments.gossip_pga --iterations 60 --seeds 1 --out /tmp/gp  # smoke

Writes ``<out>/gossip_pga.json`` (every run's records) and ``<out>/figures/*.png``; the
summary table goes to stdout (markdown). The reference simulator runs the same training
loop, seeds and mixing code as the Flower-hosted strategy (tests/test_e2e.py checks
they agree to 1e-5), without a Flower round trip per iteration.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

BASE = {"strategy.name": "gossip_pga", "task.name": "digits", "data.partition": "dirichlet",
        "data.alpha": 0.1, "train.lr": 0.1, "train.batch_size": 32, "train.momentum": 0.0,
        "strategy.evaluate_nodes": False}
NODES = 16


def methods(topology: str, periods: list[int]) -> list[tuple[str, dict]]:
    out = [("gossip", {"strategy.topology": topology, "strategy.averaging": "never"})]
    for H in periods:
        out += [
            (f"local_sgd H={H}", {"strategy.topology": "identity", "strategy.period": H}),
            (f"pga H={H}", {"strategy.topology": topology, "strategy.period": H}),
            (f"aga H0={H}", {"strategy.topology": topology, "strategy.period": H,
                             "strategy.averaging": "adaptive"}),
        ]
    return out


def run_one(job: tuple) -> dict:
    from conf import load_config

    label, topology, overrides, seed, iterations, every = job
    cfg = load_config({**BASE, **overrides, "run.seed": seed})
    return simulate(cfg, NODES, iterations, every, label=label, topology=topology, seed=seed,
                    overrides=overrides)


def simulate(cfg, num_nodes: int, iterations: int, every: int, **meta) -> dict:
    """One engine run of ``cfg`` on ``num_nodes`` nodes, compacted, with ``meta`` and its time."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=UserWarning)  # flwr-datasets' Dirichlet retries
    torch.set_num_threads(1)
    from engine import run as engine_run

    start = time.perf_counter()
    run = engine_run(cfg, num_nodes, iterations, evaluate_every=every)
    return compact({**meta, "seconds": time.perf_counter() - start, "records": run.records})


def compact(result: dict) -> dict:
    """Keep the evaluated records whole; of the others only the per-iteration series the
    figures and the table need (a run's full records are ~100 KB of JSON)."""
    records = result.pop("records")
    result["records"] = [r for r in records if "xbar_train_loss" in r]
    for key in ("consensus_distance", "global_average", "modelled_bytes_per_node", "modelled_hops"):
        result[key] = [round(r[key], 7) for r in records]
    return result


def summarise(results: list[dict]) -> list[dict]:
    rows = {}
    for result in results:
        key = (result["topology"], result["label"])
        last = result["records"][-1]
        rows.setdefault(key, []).append({
            "xbar_train_loss": last["xbar_train_loss"],
            "test_accuracy": last["test_accuracy"],
            "consensus": float(np.mean(result["consensus_distance"])),
            "globals": sum(result["global_average"]),
            "bytes": float(np.mean(result["modelled_bytes_per_node"])),
            "hops": float(np.mean(result["modelled_hops"])),
        })
    table = []
    for (topology, label), runs in rows.items():
        row = {"topology": topology, "method": label, "seeds": len(runs)}
        for field in runs[0]:
            values = np.array([r[field] for r in runs], dtype=float)
            row[field] = (float(values.mean()), float(values.std()))
        table.append(row)
    return table


def markdown(table: list[dict]) -> str:
    lines = ["| graph | method | x̄ train loss | test acc | mean consensus dist. | global avgs | "
             "modelled KB/node/iter | modelled hops/iter |", "|" + " --- |" * 8]
    for row in table:
        def pm(field, fmt):
            mean, std = row[field]
            return f"{mean:{fmt}} ± {std:{fmt}}"
        lines.append(f"| {row['topology']} | {row['method']} | {pm('xbar_train_loss', '.4f')} | "
                     f"{pm('test_accuracy', '.3f')} | {pm('consensus', '.4f')} | "
                     f"{row['globals'][0]:.0f} | {row['bytes'][0] / 1e3:.0f} | {row['hops'][0]:.2f} |")
    return "\n".join(lines)


def window_mean(series, width: int) -> np.ndarray:
    """Mean over consecutive windows of ``width`` iterations: Local SGD's consensus
    distance is a saw-tooth (0 at each global average, growing between them) that would
    squash every other curve; its window mean is the level that matters."""
    values = np.asarray(series, float)
    usable = len(values) // width * width
    return values[:usable].reshape(-1, width).mean(axis=1)


def band(ax, xs, per_seed, label, floor=None, **style):
    """Mean over seeds (the rows of ``per_seed``) with a shaded mean ± std band; ``floor``
    keeps the band's lower edge above it (a log axis)."""
    values = np.asarray(per_seed, float)
    mean, std = values.mean(axis=0), values.std(axis=0)
    line, = ax.plot(xs, mean, label=f"{label} ({len(values)} seeds)", **style)
    low = mean - std if floor is None else np.maximum(mean - std, floor)
    ax.fill_between(xs, low, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)


def figures(results: list[dict], out: Path, periods: list[int], window: int = 16) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for topology in ("ring", "exponential"):
        fig, axes = plt.subplots(2, len(periods), figsize=(5 * len(periods), 8), squeeze=False)
        for col, H in enumerate(periods):
            wanted = ["parallel", "gossip", f"local_sgd H={H}", f"pga H={H}", f"aga H0={H}"]
            for color, label in enumerate(wanted):
                runs = [r for r in results if r["label"] == label
                        and r["topology"] in (topology, "any")]
                if not runs:
                    continue
                xs = [x["iteration"] for x in runs[0]["records"]]
                band(axes[0, col], xs, [[x["xbar_train_loss"] for x in r["records"]] for r in runs], label,
                     floor=1e-12, color=f"C{color}")
                windows = [window_mean(r["consensus_distance"], window) for r in runs]
                centres = (np.arange(len(windows[0])) + 0.5) * window
                if label != "parallel":  # parallel SGD is always in consensus (0)
                    band(axes[1, col], centres, windows, label, floor=1e-12, color=f"C{color}")
            axes[0, col].set(title=f"{topology}, H = {H}: training loss of x̄", yscale="log",
                             xlabel="iteration", ylabel="training loss of x̄ (mean ± std)")
            axes[1, col].set(title=f"consensus distance, mean over {window}-iteration windows",
                             yscale="log", xlabel="iteration",
                             ylabel="(1/n) Σ‖x_i − x̄‖² (mean ± std)")
            axes[0, col].legend(fontsize=7)
            axes[1, col].legend(fontsize=7)
        claim = ("PGA beats Gossip SGD and Local SGD with the same H" if topology == "ring" else
                 "well connected, Gossip SGD and PGA nearly coincide")
        fig.suptitle(f"Gossip-PGA, n = {NODES}, digits Dirichlet(0.1), {topology} graph. "
                     f"Claim: {claim}")
        fig.tight_layout()
        path = out / "figures" / f"gossip_pga_{topology}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--periods", default="4,8,16")
    parser.add_argument("--every", type=int, default=20, help="evaluate x̄ every N iterations")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the figures from <out>/results/gossip_pga.json, no runs")
    args = parser.parse_args(argv)
    periods = [int(p) for p in args.periods.split(",")]
    out = Path(args.out)
    if args.replot:
        saved = json.loads((out / "results" / "gossip_pga.json").read_text())
        for path in figures(saved["runs"], out, periods):
            print(f"figure: {path}")
        return 0
    jobs = []
    for seed in range(args.seeds):
        jobs.append(("parallel", "any", {"strategy.period": 1}, seed, args.iterations, args.every))
        for topology in ("ring", "exponential"):
            for label, overrides in methods(topology, periods):
                jobs.append((label, topology, overrides, seed, args.iterations, args.every))
    # Local SGD (W = I) does not depend on the graph: run it once, show it on both.
    seen, unique = set(), []
    for job in jobs:
        key = (job[0], job[3]) if job[0].startswith("local_sgd") else (job[0], job[1], job[3])
        if key not in seen:
            seen.add(key)
            unique.append(job if not job[0].startswith("local_sgd") else (*job[:1], "any", *job[2:]))
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_one, unique))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(exist_ok=True)
    with open(out / "results" / "gossip_pga.json", "w") as handle:
        json.dump({"base": BASE, "nodes": NODES, "iterations": args.iterations,
                   "seeds": args.seeds, "runs": results}, handle)
    expanded = [dict(r, topology=t) for r in results
                for t in (("ring", "exponential") if r["topology"] == "any" else (r["topology"],))]
    print(markdown(summarise(expanded)))
    for path in figures(results, out, periods):
        print(f"figure: {path}")
    print(f"{len(unique)} runs in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
