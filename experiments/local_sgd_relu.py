"""The Local SGD / over-parameterized ReLU experiment (issue 6) on the one-process reference.

Deng, Kamani, Mahdavi (AISTATS 2022) prove that Local (S)GD drives the squared loss of a
wide enough ReLU network to zero at a linear rate on non-IID clients, because the local
gradients stay close to the gradient at the averaged model. Setting here:

- the ``teacher`` task (512 inputs on the unit sphere in R^16, 410 for training, targets
  from a random 2-layer ReLU teacher), split over K in {4, 8} clients by a Dirichlet(0.5)
  draw over target deciles (``data.partition='dirichlet'``: non-IID);
- a two-layer student ``x -> v^T relu(W x + b) + c`` (``model.depth=1``, He init, all
  layers trained), width m in {64, 256, 1024, 4096};
- local **full-batch** gradient descent (``train.batch_size`` >= every partition), tau in
  {1, 5, 20, 50} local steps per round, uniform averaging (``strategy.weighting``'s
  default; ``experiments.local_sgd_theory`` weighs by examples);
- step size ``eta = 32 / m``: the theory's eta = Theta(1/m). With PyTorch's standard
  parametrization the top eigenvalue of the tangent kernel grows like m/48 (output layer),
  so a width-independent eta is unstable at m = 4096 or very slow at m = 64; 32/m keeps
  eta * lambda_max between 0.7 and 1.4 at every width.

Every round records the training loss of the global model on the whole training pool,
the relative weight change from the initial model, the ReLU activation flips on the
training inputs, the numerical rank of each weight matrix (``run.diagnostics``), and each
client's gradient drift at every local step (``train.drift_every=1``; free for full
batches)::

    python -m experiments.local_sgd_relu                 # full sweep, seeds 0, 1, 2
    python -m experiments.local_sgd_relu --quick --out /tmp/lsr   # smoke: a tiny grid
    python -m experiments.local_sgd_relu --task digits-mse --taus 1,5,20 --rounds 30
    python -m experiments.local_sgd_relu --setting theory         # the theorem's setting:
                                                                  # experiments.local_sgd_theory

Writes ``<out>/results/local_sgd_relu[_<task>].json`` (with ``experiments.provenance``'s
commit, uncommitted code and command) and ``<out>/figures/local_sgd_relu_*.png`` (mean
over the seeds, +- one std shaded or as error bars) and prints a markdown table (mean +-
std over the seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from experiments.provenance import provenance

LR_TIMES_WIDTH = 32.0  # eta = 32 / m
# --task: the task's own overrides and eta * m. digits' inputs have norm ~5 instead of 1,
# so its tangent kernel is larger. eta = 16/m (chosen from a 15-round probe at tau = 5)
# was NOT stable: over 30 rounds the global loss rose to 55-107x its start in round 1
# at m >= 1024 with tau = 5, and to 61x (m = 1024) and 1157x (m = 4096) with tau = 1
# (rounds 5-8) before falling again, and the clients' local loss to 3-576x its start
# inside round 1 at m >= 1024 for every tau (commit e5c018d's
# results/local_sgd_relu_digits_mse.json). eta = 8/m (3 seeds, commit 71c088c) was stable
# at m >= 1024 but still overshot with tau = 1 at m = 64 (to 1.08x and 1.72x in two seeds)
# and m = 256 (1.06x): the kernel's top eigenvalue is not proportional to m at small m.
# eta = 4/m keeps the global and the local loss at or below their start at every width
# (the sweep records both peaks: ``summary()['peak_ratio']``, ``['peak_local_ratio']``).
TASKS = {
    "teacher": ({"task.name": "teacher"}, LR_TIMES_WIDTH),
    "digits-mse": ({"task.name": "digits", "task.loss": "mse"}, 4.0),
}


def overrides(width: int, tau: int, seed: int = 0, task: str = "teacher") -> dict:
    """The config of one run (everything else is conf/base.yaml + conf/task/<task>.yaml)."""
    task_overrides, lr_times_width = TASKS[task]
    return {**task_overrides, "data.partition": "dirichlet", "data.alpha": 0.5,
            "model.depth": 1, "model.width": width, "train.lr": lr_times_width / width,
            "train.local_steps": tau, "train.batch_size": 4096, "run.seed": seed,
            "run.diagnostics": True, "train.drift_every": 1}


def run_one(job: tuple) -> dict:
    """One (K, m, tau) run: per-round records, plus the round-0 loss."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import tasks
    from conf import load_config
    from engine import run

    clients, width, tau, rounds, seed, *task = job
    cfg = load_config(overrides(width, tau, seed, *task))
    data, loss_fn, splits, model = tasks.federation(cfg, clients)
    if max(len(s) for s in splits) > cfg.train.batch_size:
        raise ValueError("train.batch_size must cover every partition (full-batch local GD).")
    initial = tasks.evaluate(model, data.train, loss_fn, data.kind)["loss"]
    start = time.perf_counter()
    records = run(cfg, clients, rounds=rounds,
                  on_round=lambda r: not math.isfinite(r["global_train_loss"])).records
    return {"clients": clients, "width": width, "tau": tau, "lr": cfg.train.lr, "seed": seed,
            "initial_loss": initial, "partition_sizes": [len(s) for s in splits],
            "records": records, "seconds": time.perf_counter() - start}


def summary(run: dict) -> dict:
    """What the figures and the table show for one run."""
    recs = run["records"]
    losses = [r["global_train_loss"] for r in recs]
    last = recs[-1]
    return {
        "final_loss": losses[-1],
        "loss_ratio": losses[-1] / run["initial_loss"],
        "peak_ratio": float(np.max(losses)) / run["initial_loss"],  # > 1: the loss rose above its start
        # the clients' mean loss over their local steps: a blow-up inside a round shows here
        "peak_local_ratio": float(np.max([r["train_loss"] for r in recs])) / run["initial_loss"],
        "weight_change": last["weight_change"],
        "weight_change_l0": last["weight_change_l0"],
        "weight_change_l1": last["weight_change_l1"],
        "activation_flips": last["activation_flips"],
        "drift_max": max(r["gradient_drift_max"] for r in recs),  # worst client, worst round
        "drift_mean": float(np.mean([r["gradient_drift"] for r in recs])),  # weighted mean, mean over rounds
        "rank_l0": last["rank_l0"],
    }


def rounds_to(run: dict, fraction: float) -> int | None:
    """First round whose training loss is below ``fraction`` of the initial loss."""
    target = fraction * run["initial_loss"]
    return next((r["round"] for r in run["records"] if r["global_train_loss"] <= target), None)


def slope(xs, ys) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def by_setting(runs: list[dict]) -> dict[tuple, list[dict]]:
    """Runs by (K, m, tau), each list over the seeds."""
    out: dict[tuple, list[dict]] = {}
    for run in runs:
        out.setdefault((run["clients"], run["width"], run["tau"]), []).append(run)
    return out


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std over seeds (std 0 for one seed)."""
    values = np.asarray(values, float)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else 0.0)


def pm(values, fmt: str = ".3g") -> str:
    mean, std = mean_std(values)
    return f"{mean:{fmt}} ± {std:{fmt}}" if len(values) > 1 else f"{mean:{fmt}}"


def table(runs: list[dict], fraction: float) -> str:
    """One row per (K, tau, m): mean ± std over the seeds (a plain value for one seed)."""
    lines = [f"| K | tau | m | eta | seeds | final loss / initial | peak loss / initial | peak local "
             f"loss / initial | rounds to {fraction:g} x initial | weight change | first layer | "
             "output layer | activation flips | drift (max) | drift (mean) |", "|" + " --- |" * 15]
    groups = by_setting(runs)
    for (k, m, tau) in sorted(groups, key=lambda key: (key[0], key[2], key[1])):
        group = groups[(k, m, tau)]
        s = [summary(r) for r in group]
        hits = [rounds_to(r, fraction) for r in group]
        reached = [h for h in hits if h is not None]
        hit = (pm(reached, ".0f") + (f" ({len(reached)}/{len(hits)} seeds)" if len(reached) < len(hits)
                                      else "")) if reached else "-"
        cells = [pm([x[name] for x in s], f) for name, f in
                 (("loss_ratio", ".4f"), ("peak_ratio", ".3f"), ("peak_local_ratio", ".3f"))] + [hit]
        cells += [pm([x[name] for x in s], ".2e") for name in
                  ("weight_change", "weight_change_l0", "weight_change_l1", "activation_flips")]
        cells += [pm([x[name] for x in s], ".3f") for name in ("drift_max", "drift_mean")]
        cells = [str(k), str(tau), str(m), f"{group[0]['lr']:.4g}", str(len(group)), *cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slopes(runs: list[dict]) -> dict:
    """log-log slope against m of each diagnostic's seed mean, per (K, tau)."""
    groups = by_setting(runs)
    out = {}
    for k in sorted({key[0] for key in groups}):
        for tau in sorted({key[2] for key in groups}):
            widths = sorted(m for kk, m, t in groups if kk == k and t == tau)
            if len(widths) < 2:
                continue
            stats = [{name: np.mean([summary(r)[name] for r in groups[(k, m, tau)]])
                      for name in ("weight_change", "weight_change_l0", "weight_change_l1",
                                   "activation_flips", "drift_max")} for m in widths]
            out[f"K={k} tau={tau}"] = {name: slope(widths, [s[name] for s in stats])
                                       for name in stats[0] if all(s[name] > 0 for s in stats)}
    return out


def figures(runs: list[dict], out: Path, suffix: str = "") -> list[Path]:
    """Five figures; every curve is the mean over the seeds with +- one std shaded (log
    quantities: mean +- std of log10), every point against m a mean with a std error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_setting(runs)
    ks = sorted({k for k, _, _ in groups})
    taus = sorted({t for _, _, t in groups})
    widths = sorted({m for _, m, _ in groups})
    seeds = len({r["seed"] for r in runs})
    color = {m: plt.cm.viridis(i / max(1, len(widths) - 1)) for i, m in enumerate(widths)}
    tcolor = {t: plt.cm.plasma(i / max(1, len(taus))) for i, t in enumerate(taus)}
    (out / "figures").mkdir(parents=True, exist_ok=True)
    paths = []
    note = f" (mean of {seeds} seeds ± std)" if seeds > 1 else ""

    def save(fig, name):
        fig.tight_layout()
        path = out / "figures" / name.replace(".png", f"{suffix}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    def band(ax, group, color, label):
        n = min(len(r["records"]) for r in group)
        logs = np.log10([[r["initial_loss"]] + [x["global_train_loss"] for x in r["records"][:n]]
                         for r in group])
        mean = logs.mean(0)
        std = logs.std(0, ddof=1) if len(group) > 1 else np.zeros_like(mean)
        rounds = np.arange(n + 1)
        ax.plot(rounds, 10**mean, color=color, label=label)
        ax.fill_between(rounds, 10 ** (mean - std), 10 ** (mean + std), color=color, alpha=0.25, lw=0)

    def loss_panels(columns, column, lines, line, colors, name):
        """Training loss vs rounds: one panel per (K, column value), one band per line value."""
        fig, axes = plt.subplots(len(ks), len(columns), figsize=(3.6 * len(columns), 3.2 * len(ks)),
                                 squeeze=False, sharey=True)
        for i, k in enumerate(ks):
            for j, c in enumerate(columns):
                ax = axes[i, j]
                for v in lines:
                    key = (k, v, c) if line == "m" else (k, c, v)  # groups' key: (K, m, tau)
                    if key in groups:
                        band(ax, groups[key], colors[v], f"{line} = {v}")
                ax.set(yscale="log", title=f"K = {k}, {column} = {c}", xlabel="round")
                if j == 0:
                    ax.set_ylabel("training loss F(W_bar)")
        axes[0, 0].legend(fontsize=8)
        if note:
            fig.suptitle("training loss" + note, fontsize=10)
        save(fig, name)

    # 1. one band per width, one panel per (K, tau); 2. one band per tau, one panel per (K, m)
    loss_panels(taus, "tau", widths, "m", color, "local_sgd_relu_loss_width.png")
    loss_panels(widths, "m", taus, "tau", tcolor, "local_sgd_relu_loss_tau.png")

    # 3. weight change, 4. activation flips, 5. drift: against m, one line per (K, tau)
    def against_width(ax, name, taus_shown, label):
        for k, style in zip(ks, ("-o", "--s"), strict=False):
            for tau in taus_shown:
                ms = [m for m in widths if (k, m, tau) in groups]
                stats = [mean_std([summary(r)[name] for r in groups[(k, m, tau)]]) for m in ms]
                ax.errorbar(ms, [s[0] for s in stats], yerr=[s[1] for s in stats], fmt=style,
                            color=tcolor[tau], label=f"K = {k}, tau = {tau}", ms=4, capsize=2)
        ax.set(xscale="log", yscale="log", xlabel="width m", ylabel=label)

    def reference(ax, name, power, tau):
        ms = [m for m in widths if (ks[-1], m, tau) in groups]
        if ms:
            y0 = np.mean([summary(r)[name] for r in groups[(ks[-1], ms[0], tau)]])
            x = np.array(ms, float)
            ax.plot(x, y0 * (x / x[0]) ** power, ":k", label=f"~ m^{power:g}")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, name, title in zip(axes, ("weight_change", "weight_change_l0", "weight_change_l1"),
                               ("all parameters", "first layer W", "output layer v"), strict=True):
        against_width(ax, name, taus, "||W_T - W_0|| / ||W_0||")
        reference(ax, name, -0.5, taus[-1])
        ax.set_title(f"weight change: {title}")
    axes[0].legend(fontsize=7)
    fig.suptitle("relative weight change after the last round" + note, fontsize=10)
    save(fig, "local_sgd_relu_weight_change.png")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    against_width(ax, "activation_flips", taus, "fraction of ReLU patterns flipped")
    reference(ax, "activation_flips", -0.5, taus[-1])
    ax.set_title("activation flips after the last round" + ("\n" + note.strip() if note else ""),
                 fontsize=10)
    ax.legend(fontsize=7)
    save(fig, "local_sgd_relu_flips.png")

    moving = [t for t in taus if t > 1]  # tau = 1: the only step is at W_bar, drift = 0
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    against_width(axes[0], "drift_max", moving, "max_t ||g_k(W_k^t) - g_k(W_bar)|| / ||g_k(W_bar)||")
    axes[0].set_title("gradient drift: worst client, worst round")
    axes[0].legend(fontsize=7)
    for k, style in zip(ks, ("-o", "--s"), strict=False):
        for m in widths:
            ts = [t for t in moving if (k, m, t) in groups]
            stats = [mean_std([summary(r)["drift_mean"] for r in groups[(k, m, t)]]) for t in ts]
            axes[1].errorbar(ts, [s[0] for s in stats], yerr=[s[1] for s in stats], fmt=style,
                             color=color[m], label=f"K = {k}, m = {m}", ms=4, capsize=2)
    axes[1].set(xscale="log", xlabel="local steps tau", ylabel="drift (weighted mean, mean over rounds)",
                title="gradient drift against tau")
    axes[1].legend(fontsize=7)
    if note:
        fig.suptitle("gradient drift" + note, fontsize=10)
    save(fig, "local_sgd_relu_drift.png")
    return paths


def main(argv=None) -> int:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", default="standard", choices=("standard", "theory"),
                        help="theory: experiments.local_sgd_theory (ntk model, 50 points, eta = 4)")
    parser.add_argument("--clients", default="4,8")
    parser.add_argument("--widths", default="64,256,1024,4096")
    parser.add_argument("--taus", default=None, help="standard: 1,5,20,50; theory: 1,5,20")
    parser.add_argument("--rounds", type=int, default=50, help="standard setting")
    parser.add_argument("--steps", type=int, default=600,
                        help="theory: local steps per run (rounds = steps / tau)")
    parser.add_argument("--compare-step", type=int, default=0,
                        help="theory: compare with GD after this many steps (0: steps / 3)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--target", type=float, default=0.1, help="rounds to reach this fraction of F_0")
    parser.add_argument("--quick", action="store_true",
                        help="smoke: K=4, m in {64, 1024}, tau in {1, 5}, few rounds, 2 seeds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--task", default="teacher", choices=sorted(TASKS))
    parser.add_argument("--out", default="docs")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the figures from <out>/results/*.json")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.taus is None:
        args.taus = "1,5,20" if args.setting == "theory" else "1,5,20,50"
    if args.quick:
        args.clients, args.widths, args.taus, args.seeds = "4", "64,1024", "1,5", "0,1"
        args.rounds, args.steps = 5, 60
    if args.setting == "theory":
        from experiments import local_sgd_theory

        return local_sgd_theory.main(args, argv)
    suffix = "" if args.task == "teacher" else "_" + args.task.replace("-", "_")
    out = Path(args.out)
    if args.plot_only:
        with open(out / "results" / f"local_sgd_relu{suffix}.json") as handle:
            for path in figures(json.load(handle)["runs"], out, suffix):
                print(f"figure: {path}")
        return 0
    grid = [(k, m, tau, args.rounds, seed, args.task)
            for k in map(int, args.clients.split(",")) for m in map(int, args.widths.split(","))
            for tau in map(int, args.taus.split(",")) for seed in map(int, args.seeds.split(","))]
    grid.sort(key=lambda job: -job[0] * job[1] * job[2])  # longest first: better packing
    made = provenance("experiments.local_sgd_relu", argv)  # before the runs: others commit meanwhile
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(run_one, grid))
    runs.sort(key=lambda r: (r["clients"], r["tau"], r["width"], r["seed"]))
    (out / "results").mkdir(parents=True, exist_ok=True)
    fitted = slopes(runs)
    with open(out / "results" / f"local_sgd_relu{suffix}.json", "w") as handle:
        json.dump({**made, "task": args.task,
                   "lr_times_width": TASKS[args.task][1], "rounds": args.rounds,
                   "seeds": sorted({r["seed"] for r in runs}), "slopes": fitted,
                   "seconds": time.perf_counter() - start,
                   "summaries": [{k: r[k] for k in ("clients", "width", "tau", "lr", "seed")} | summary(r)
                                 for r in runs],
                   "runs": runs}, handle)
    print(table(runs, args.target))
    print()
    print("log-log slopes against m:", json.dumps(fitted, indent=1))
    for path in figures(runs, out, suffix):
        print(f"figure: {path}")
    print(f"{len(grid)} runs in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
