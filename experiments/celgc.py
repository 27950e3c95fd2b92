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
DIVERGED = 20.0  # a run stops (and counts as diverged) once its train loss is above this or not finite


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

    model, label, n, interval, overrides, data_path, iterations, test_examples, *rest = job
    evaluate_iterations = rest[0] if rest else 32  # optional 9th field
    cfg = load_config({**base(data_path, model), **overrides})
    _shrink_test_set(cfg, test_examples)
    every = max(1, evaluate_iterations // interval)
    start = time.perf_counter()
    records = run(cfg, n, rounds=iterations // interval, evaluate_every=every,
                  on_round=lambda r: not math.isfinite(r["train_loss"]) or r["train_loss"] > DIVERGED).records
    for r in records:
        r["iteration"] = r["round"] * interval
    diverged = records[-1]["round"] < iterations // interval
    return {"model": model, "label": label, "clients": n, "I": interval, "records": records,
            "initial_test_loss": initial_test_loss(cfg), "diverged": diverged,
            "diverged_at": records[-1]["iteration"] if diverged else None,
            "seconds": time.perf_counter() - start}


def initial_test_loss(cfg) -> float:
    """The test loss of the initial model (``run.seed``'s weights), every run's iteration 0."""
    import tasks

    data = tasks.load_task(cfg)
    return tasks.evaluate(tasks.make_model(cfg, data), data.test, tasks.make_loss(cfg, data),
                          data.kind, cfg.eval.batch_size)["loss"]


def last_finite(points) -> tuple[float, float] | None:
    """The last ``(x, y)`` of ``points`` with a finite y: where a diverged curve is marked."""
    return next(((x, y) for x, y in reversed(list(points)) if math.isfinite(y)), None)


def mark_divergence(ax, run: dict, x: float, y: float | None, color=None, cap: float = 8.0,
                    text: str | None = None, label: str | None = None) -> None:
    """An x at ``(x, y)``, the diverged run's last finite loss (``y`` capped at ``cap``; at
    ``cap`` where it has none), annotated with ``text`` (default: the iteration at which
    ``run`` stopped; "" for none): a diverged run stays visible."""
    y = cap if y is None or not math.isfinite(y) else min(y, cap)
    ax.plot([x], [y], "x", color=color, markersize=10, markeredgewidth=2.5, zorder=5, label=label)
    text = f"{run['label']}: diverged at iteration {run['diverged_at']}" if text is None else text
    if text:
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, -12), fontsize=7, color=color)


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
                its = [x["iteration"] for x in evals]
                loss = [min(x["test_loss"], 8.0) for x in evals]
                comm = [x["round"] for x in evals]
                style = "--" if r["label"].startswith(("naive", "unclipped")) else "-"
                line, = axes[row, 0].plot(its, loss, style, label=r["label"])
                axes[row, 1].plot(comm, loss, style, color=line.get_color())
                if r.get("diverged"):  # marked, never dropped: an x at its last finite loss
                    last = r["records"][-1]
                    r = {**r, "diverged_at": r.get("diverged_at") or last["iteration"]}
                    k = last_finite(zip(range(len(loss)), loss))
                    for ax, x in ((axes[row, 0], its), (axes[row, 1], comm)):
                        stop = last["iteration"] if ax is axes[row, 0] else last["round"]
                        mark_divergence(ax, r, x[k[0]] if k else stop, k[1] if k else None,
                                        line.get_color())
            axes[row, 0].set(title=f"{model}, N = {n}: test loss vs iterations per client",
                             xlabel="local iterations per client",
                             ylabel="test loss of the averaged model (capped at 8)")
            axes[row, 1].set(title="test loss vs communication rounds", xscale="log",
                             xlabel="communication rounds", ylabel="test loss (capped at 8)")
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
