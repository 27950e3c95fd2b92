"""The CELGC experiment (issue 3) on the one-process reference, with figures.

Character LSTM (and the ReLU RNN) on tiny Shakespeare, IID over N in {4, 8} clients (the
paper's homogeneous setting), a step size large enough that unclipped training diverges
on one client (LSTM: eta = 20; ReLU RNN: eta = 2), clipping threshold c = gamma/eta = 0.25
(AWD-LSTM's value; gamma = 5 and 0.5), the same number of local iterations T per client
for every method:

- naive parallel clipping (communicates every iteration; "I = 1 baseline"),
- CELGC with I in {1, 2, 4, 8, 16} (one round = I clipped local steps, then a uniform mean),
- unclipped Local SGD with the same eta and I = 4.

Plus the relaxed-smoothness diagnostic: local smoothness ||g(x') - g(x)|| / ||x' - x||
against ||g(x)|| along an LSTM trajectory and an MLP (digits) trajectory::

    python -m experiments.celgc --data /path/to/tinyshakespeare/input.txt --models lstm
    python -m experiments.celgc --data ... --models rnn --clients 4 --periods 1,4
    python -m experiments.celgc --data ... --iterations 32 --out /tmp/celgc   # smoke

Writes ``<out>/results/celgc_<models>.json`` and ``<out>/figures/celgc_*.png``; prints a
table.
The reference runs the same training loop, seeds and averaging as the Flower-hosted
strategies (tests/test_clipped.py checks they agree to 1e-6).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

STEP = {"lstm": (20.0, 5.0), "rnn": (2.0, 0.5)}  # (eta, gamma): c = gamma / eta = 0.25


def base(data_path: str, model: str) -> dict:
    eta, gamma = STEP[model]
    return {"task.name": "shakespeare", "data.path": data_path, "data.partition": "iid",
            "model.name": model, "train.lr": eta, "strategy.clip_gamma": gamma,
            "train.batch_size": 16, "strategy.weighting": "uniform", "train.momentum": 0.0,
            "train.persist_optimizer_state": True}


def plan(model: str, clients: list[int], periods: list[int]) -> list[tuple[str, int, int, dict]]:
    jobs = []
    for n in clients:
        jobs.append(("naive", n, 1, {"strategy.name": "naive_clipping"}))
        for interval in periods:
            jobs.append((f"celgc I={interval}", n, interval, {"strategy.name": "clipped_fedavg",
                                                               "train.local_steps": interval}))
        jobs.append(("unclipped I=4", n, 4, {"strategy.name": "fedavg", "train.local_steps": 4}))
    return [(model, *job) for job in jobs]


def run_one(job) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from conf import load_config
    from engine import run

    model, label, n, interval, overrides, data_path, iterations, test_examples = job
    cfg = load_config({**base(data_path, model), **overrides})
    _shrink_test_set(cfg, test_examples)
    every = max(1, 32 // interval)  # evaluate every 32 iterations
    start = time.perf_counter()
    records = run(cfg, n, rounds=iterations // interval, evaluate_every=every,
                  on_round=lambda r: not math.isfinite(r["train_loss"]) or r["train_loss"] > 20).records
    for r in records:
        r["iteration"] = r["round"] * interval
    return {"model": model, "label": label, "clients": n, "I": interval, "records": records,
            "diverged": records[-1]["round"] < iterations // interval,
            "seconds": time.perf_counter() - start}


def _shrink_test_set(cfg, keep: int) -> None:
    """Evaluate on the first ``keep`` test sequences (the sweep's cost is evaluation-bound
    otherwise); the cached task data is shared by the process, so cut it once."""
    import tasks

    data = tasks.load_task(cfg)
    if len(data.test) > keep:
        data.test = data.test.subset(range(keep))


def smoothness_pairs(data_path: str, steps: int) -> dict:
    """(||g||, local smoothness) along clipped-SGD trajectories: LSTM and digits MLP."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import tasks
    from client.train import local_train
    from conf import load_config

    out = {}
    for name, overrides, lr, gamma in [
        ("lstm", base(data_path, "lstm"), *STEP["lstm"]),
        ("mlp (digits)", {"task.name": "digits"}, 0.5, 0.5),
    ]:
        cfg = load_config(overrides)
        data = tasks.load_task(cfg)
        model = tasks.make_model(cfg, data)
        result = local_train(model, tasks.client_split(cfg, 0, 1), tasks.make_loss(cfg, data),
                             steps=steps, batch_size=16, lr=lr, clip_gamma=gamma, smoothness_every=2)
        out[name] = result.smoothness
    return out


def table(results: list[dict]) -> str:
    lines = ["| model | N | method | rounds (communications) | final train loss | test loss | "
             "test ppl | clipped fraction | diverged |", "|" + " --- |" * 9]
    for r in results:
        last = r["records"][-1]
        evals = [x for x in r["records"] if "test_loss" in x]
        test = evals[-1] if evals else {}
        clip = np.mean([x["clip_fraction"] for x in r["records"]])
        lines.append(
            f"| {r['model']} | {r['clients']} | {r['label']} | {last['round']} | "
            f"{last['train_loss']:.3f} | {test.get('test_loss', float('nan')):.3f} | "
            f"{test.get('test_perplexity', float('nan')):.2f} | {clip:.2f} | "
            f"{'yes' if r['diverged'] else 'no'} |"
        )
    return "\n".join(lines)


def iterations_to(results: list[dict], target: float) -> str:
    lines = [f"Iterations (per client) until the test loss first reaches {target}:", ""]
    for r in results:
        hit = next((x["iteration"] for x in r["records"] if x.get("test_loss", 99) <= target), None)
        lines.append(f"- {r['model']} N={r['clients']} {r['label']}: {hit if hit else 'not reached'}")
    return "\n".join(lines)


def figures(results: list[dict], pairs: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for model in sorted({r["model"] for r in results}):
        runs = [r for r in results if r["model"] == model]
        clients = sorted({r["clients"] for r in runs})
        fig, axes = plt.subplots(len(clients), 2, figsize=(12, 4.2 * len(clients)), squeeze=False)
        for row, n in enumerate(clients):
            for r in (x for x in runs if x["clients"] == n):
                evals = [x for x in r["records"] if "test_loss" in x]
                if not evals:
                    continue
                its = [x["iteration"] for x in evals]
                loss = [min(x["test_loss"], 8.0) for x in evals]
                comm = [x["round"] for x in evals]
                style = "--" if r["label"].startswith(("naive", "unclipped")) else "-"
                axes[row, 0].plot(its, loss, style, label=r["label"])
                axes[row, 1].plot(comm, loss, style, label=r["label"])
            axes[row, 0].set(title=f"{model}, N = {n}: test loss vs iterations per client",
                             xlabel="local iterations", ylabel="test loss (clipped at 8)")
            axes[row, 1].set(title="test loss vs communication rounds", xscale="log",
                             xlabel="communication rounds")
            axes[row, 0].legend(fontsize=8)
        fig.tight_layout()
        path = out / "figures" / f"celgc_{model}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    if not pairs:
        return paths
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, points in pairs.items():
        if points:
            g, s = zip(*points, strict=True)
            ax.scatter(g, s, s=8, label=name, alpha=0.6)
    ax.set(xscale="log", yscale="log", xlabel="||grad f(x_t)||",
           ylabel="||grad f(x_t+1) - grad f(x_t)|| / ||x_t+1 - x_t||",
           title="local smoothness vs gradient norm (clipped SGD)")
    ax.legend()
    fig.tight_layout()
    path = out / "figures" / "celgc_smoothness.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [*paths, path]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="tiny Shakespeare input.txt")
    parser.add_argument("--iterations", type=int, default=256, help="local iterations per client")
    parser.add_argument("--clients", default="4,8")
    parser.add_argument("--periods", default="1,2,4,8,16")
    parser.add_argument("--models", default="lstm", help="lstm, rnn or lstm,rnn")
    parser.add_argument("--no-smoothness", action="store_true")
    parser.add_argument("--test-examples", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    periods = [int(p) for p in args.periods.split(",")]
    models = args.models.split(",")
    jobs = [job for model in models for job in plan(model, clients, periods)]
    jobs = [(*job, args.data, args.iterations, args.test_examples) for job in jobs]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        pairs_future = None if args.no_smoothness else pool.submit(
            smoothness_pairs, args.data, min(300, 4 * args.iterations))
        results = list(pool.map(run_one, jobs))
        pairs = pairs_future.result() if pairs_future else {}
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    with open(out / "results" / f"celgc_{'_'.join(models)}.json", "w") as handle:
        json.dump({"step": {m: STEP[m] for m in models}, "iterations": args.iterations,
                   "runs": results, "smoothness": pairs}, handle)
    print(table(results))
    print()
    print(iterations_to(results, 2.3))
    for path in figures(results, pairs, out):
        print(f"figure: {path}")
    print(f"{len(jobs)} runs in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
