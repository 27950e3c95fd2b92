"""CELGC's speedup in N (issue 15): iterations to a target loss against the number of clients.

Liu, Zhuang, Lei, Liao (NeurIPS 2022) prove, for homogeneous (IID) data, an iteration
complexity O(1 / (N eps^4)): at a fixed per-client batch, N clients reach an eps-stationary
point in 1/N of the iterations (linear speedup, a line of slope -1 on log-log axes), with
O(1 / eps^3) communication rounds. This sweep measures it on the character LSTM:

- N in {1, 2, 4, 8, 16} IID clients, fixed per-client batch, one (eta, gamma) for every N;
- naive parallel clipping, CELGC with I in {1, 4, 16}, unclipped Local SGD (I = 4) at the
  same eta (``experiments.celgc.plan``);
- each N gets T_N = T_1 / sqrt(N) local iterations per client (rounded up to a multiple of
  16), enough for a sub-linear speedup of sqrt(N) to still reach the target;
- the loss is the averaged (global) model's test loss on a fixed subset of the held-out
  test set (the same sequences for every run), evaluated about 32 times per run;
- iterations to the target: the first crossing, linearly interpolated between the two
  evaluations around it (iteration 0 = the initial model);
- the slope of log(iterations) against log(N) is fitted per seed, reported mean +- std;
- bytes: every round each client receives the model and sends a model (CELGC) or a
  gradient (naive) of d float32, so bytes = rounds x 2 x N x 4 d.

::

    python -m experiments.celgc_speedup --data /path/to/tinyshakespeare/input.txt
    python -m experiments.celgc_speedup --data ... --quick        # N in {1, 2, 4}, ~1 minute

Writes ``<out>/results/celgc_speedup.json`` (with the git commit and the command) and
``<out>/figures/celgc_speedup*.png`` (``--name``: another name); prints the tables.
``--step-scaling sqrt`` multiplies eta and gamma by sqrt(N) (the diagnostic of whether a
fixed step length is what limits the speedup); ``--replot`` redraws from the JSON.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from experiments.celgc import last_finite, mark_divergence, plan, run_one
from experiments.provenance import provenance

CLIPPED = ("naive", "celgc")  # label prefixes of the clipped methods
KEEP = ("round", "iteration", "train_loss", "test_loss", "clip_fraction", "num_replies")


def setting(args) -> dict:
    """The config overrides every run of the sweep shares (the step sizes, the model, the
    data); ``plan`` adds the method's, the job its seed."""
    return {"train.lr": args.lr, "strategy.clip_gamma": args.gamma,
            "train.batch_size": args.batch_size, "model.width": args.width,
            "data.seq_len": args.seq_len, "data.max_train": args.max_train}


def step_scale(n: int, scaling: str) -> float:
    """The factor on eta and gamma at N clients (c = gamma / eta stays fixed): 1 (``none``,
    the main sweep), sqrt(N) or N."""
    factors = {"none": 1.0, "sqrt": math.sqrt(n), "linear": float(n)}
    if scaling not in factors:
        raise ValueError(f"step scaling must be one of {sorted(factors)}, got {scaling!r}.")
    return factors[scaling]


def budget(n: int, iterations: int, multiple: int = 16) -> int:
    """T_N = T_1 / sqrt(N) local iterations per client, rounded up to ``multiple``."""
    return multiple * math.ceil(iterations / math.sqrt(n) / multiple)


def evaluation_interval(total: int, interval: int, evaluations: int = 32) -> int:
    """Iterations between evaluations: about ``evaluations`` per run, a multiple of the
    round length ``interval`` (the averaged model exists only at the end of a round)."""
    return interval * max(1, round(total / evaluations / interval))


def jobs(args, clients: list[int], periods: list[int], seeds: list[int]) -> list[tuple]:
    """``run_one``'s jobs, seed-major (a worker process keeps one seed's data cached)."""
    out = []
    for seed in seeds:
        for model, label, n, interval, overrides in plan(args.model, clients, periods):
            total = budget(n, args.iterations)
            scale = step_scale(n, args.step_scaling)
            overrides = {**setting(args), "train.lr": args.lr * scale,
                         "strategy.clip_gamma": args.gamma * scale, **overrides, "run.seed": seed}
            out.append((model, label, n, interval, overrides, args.data, total,
                        args.test_examples, evaluation_interval(total, interval)))
    return out


def compact(run: dict, seed: int, model_size: int) -> dict:
    """A run as stored: the evaluated records (plus the last one), fewer fields."""
    records = [r for r in run["records"] if "test_loss" in r]
    if run["records"] and run["records"][-1] not in records:
        records.append(run["records"][-1])
    return {**{k: v for k, v in run.items() if k != "records"}, "seed": seed,
            "model_size": model_size, "mean_clip_fraction": float(np.mean(
                [r.get("clip_fraction", 0.0) for r in run["records"]])),
            "min_replies": int(min(r["num_replies"] for r in run["records"])),
            "records": [{k: r[k] for k in KEEP if k in r} for r in records]}


def curve(run: dict, x: str = "iteration") -> tuple[np.ndarray, np.ndarray]:
    """(x, test loss of the averaged model) at every evaluation, from iteration 0."""
    points = [(0, run["initial_test_loss"])] + [(r[x], r["test_loss"]) for r in run["records"]
                                                if "test_loss" in r]
    return np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)


def iterations_to_target(iterations, losses, target: float) -> float:
    """The first iteration at which the loss reaches ``target``, linearly interpolated
    between the evaluation before and the first one at or below it; nan if never (a
    non-finite loss counts as not reached)."""
    iterations, losses = np.asarray(iterations, float), np.asarray(losses, float)
    hits = np.flatnonzero(np.isfinite(losses) & (losses <= target))
    if len(hits) == 0:
        return float("nan")
    k = hits[0]
    if k == 0 or not np.isfinite(losses[k - 1]):
        return float(iterations[k])
    (x0, x1), (y0, y1) = iterations[k - 1 : k + 1], losses[k - 1 : k + 1]
    return float(x0 + (x1 - x0) * (y0 - target) / (y0 - y1))


def fit_slope(clients, iterations) -> float:
    """Least-squares slope of log(iterations) against log(N) over the finite points; nan
    with fewer than two. Linear speedup is -1."""
    x, y = np.log(np.asarray(clients, float)), np.log(np.asarray(iterations, float))
    keep = np.isfinite(y)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(x[keep], y[keep], 1)[0])


def mean_std(values) -> tuple[float, float, int]:
    """(mean, std, count) over the finite values (std with ddof = 0; nan where none)."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if len(values) == 0:
        return float("nan"), float("nan"), 0
    return float(values.mean()), float(values.std()), len(values)


def loss_at(run: dict, x: str, value: float) -> float:
    """The test loss at the last evaluation with ``x`` <= ``value`` (nan if the run
    stopped before ``value`` or diverged before it)."""
    xs, ys = curve(run, x)
    if run["diverged"] and run["records"][-1][x] <= value:
        return float("nan")
    if xs[-1] < value:
        return float("nan")
    return float(ys[np.flatnonzero(xs <= value)[-1]])


def summarise(runs: list[dict], target: float) -> dict:
    """Per method: iterations to ``target`` per N (mean, std, seeds that reached it), the
    slope fitted per seed (mean, std); per N: the loss at equal rounds (the I = max run's
    rounds) and at the end of the budget."""
    labels = list(dict.fromkeys(r["label"] for r in runs))
    clients = sorted({r["clients"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    out = {"target": target, "methods": {}}
    for label in labels:
        mine = [r for r in runs if r["label"] == label]
        per = {n: {r["seed"]: iterations_to_target(*curve(r), target)
                   for r in mine if r["clients"] == n} for n in clients}
        slopes = [fit_slope(clients, [per[n].get(s, float("nan")) for n in clients]) for s in seeds]
        out["methods"][label] = {
            "iterations": {str(n): dict(zip(("mean", "std", "reached"), mean_std(per[n].values())),
                                        seeds=len(per[n]), values=list(per[n].values()))
                           for n in clients},
            "slope": dict(zip(("mean", "std", "seeds"), mean_std(slopes)), values=slopes),
            "diverged": {str(n): sum(r["diverged"] for r in mine if r["clients"] == n) for n in clients},
        }
    rounds = {n: min(r["records"][-1]["round"] for r in runs if r["clients"] == n and not r["diverged"])
              for n in clients}
    out["equal_rounds"] = {
        str(n): {"rounds": rounds[n], "bytes": rounds[n] * 2 * n * 4 * runs[0]["model_size"],
                 **{label: dict(zip(("mean", "std", "seeds"), mean_std(
                     [loss_at(r, "round", rounds[n]) for r in runs
                      if r["clients"] == n and r["label"] == label]))) for label in labels}}
        for n in clients}
    out["end"] = {str(n): {label: dict(zip(("mean", "std", "seeds"), mean_std(
        [curve(r)[1][-1] if not r["diverged"] else float("nan") for r in runs
         if r["clients"] == n and r["label"] == label]))) for label in labels} for n in clients}
    return out


def markdown(summary: dict, clients: list[int]) -> str:
    """The tables of the write-up."""
    def pm(m, fmt="{:.0f}"):
        return "n/a" if not math.isfinite(m["mean"]) else f"{fmt.format(m['mean'])} ± {fmt.format(m['std'])}"

    target = summary["target"]
    lines = [f"Iterations per client to test loss {target} (mean ± std over seeds; "
             "reached/seeds where not all):", "",
             "| method | " + " | ".join(f"N = {n}" for n in clients) + " | slope |",
             "| --- |" + " --- |" * (len(clients) + 1)]
    for label, m in summary["methods"].items():
        cells = []
        for n in clients:
            it = m["iterations"][str(n)]
            cell = pm(it)
            if it["reached"] < it["seeds"]:
                cell += f" ({it['reached']}/{it['seeds']})"
            if m["diverged"][str(n)]:
                cell += f" [{m['diverged'][str(n)]} diverged]"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {pm(m['slope'], '{:.2f}')} |")
    lines += ["", "Test loss at equal communication (the rounds of the run with the fewest; "
              "at a fixed N equal rounds = equal bytes):", "",
              "| N | rounds | MB | " + " | ".join(summary["methods"]) + " |",
              "| --- | --- | --- |" + " --- |" * len(summary["methods"])]
    for n in clients:
        eq = summary["equal_rounds"][str(n)]
        lines.append(f"| {n} | {eq['rounds']} | {eq['bytes'] / 1e6:.1f} | "
                     + " | ".join(pm(eq[label], "{:.3f}") for label in summary["methods"]) + " |")
    lines += ["", "Test loss at the end of the budget (equal iterations):", "",
              "| N | " + " | ".join(summary["methods"]) + " |",
              "| --- |" + " --- |" * len(summary["methods"])]
    for n in clients:
        end = summary["end"][str(n)]
        cells = [pm(end[label], "{:.3f}") for label in summary["methods"]]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _band(ax, runs: list[dict], x: str, label: str, color=None, scale: float = 1.0):
    """Mean +- std over the seeds that did not diverge (on their shared evaluation grid),
    each diverged seed as its own line with an x where it stopped."""
    fine = [r for r in runs if not r["diverged"]]
    line = None
    if fine:
        length = min(len(curve(r, x)[0]) for r in fine)
        xs = curve(fine[0], x)[0][:length] * scale
        ys = np.array([curve(r, x)[1][:length] for r in fine])
        mean, std = ys.mean(0), ys.std(0)
        line, = ax.plot(xs, mean, color=color, label=f"{label} ({len(fine)} seeds)")
        ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.25)
        color = line.get_color()
    bad = [r for r in runs if r["diverged"]]
    for k, r in enumerate(bad):
        xs, ys = curve(r, x)
        line, = ax.plot(xs * scale, np.minimum(ys, 8.0), ":", color=color)
        color = line.get_color()
        point = last_finite(zip(xs * scale, ys)) or (r["records"][-1][x] * scale, None)
        group = f"{label}: {len(bad)}/{len(runs)} seeds diverged"
        mark_divergence(ax, r, *point, color, text=divergence_text(label, bad, len(runs)) if k == 0 else "",
                        label=group if k == 0 else None)
    return color


def divergence_text(label: str, bad: list[dict], seeds: int) -> str:
    """"unclipped I=4: 3/3 seeds diverged / at iteration 4, 4, 8 / (train loss 29, NaN, 31)"
    on three lines."""
    its = ", ".join(str(r["diverged_at"]) for r in bad)
    losses = ", ".join("NaN" if not math.isfinite(r["records"][-1]["train_loss"])
                       else f"{r['records'][-1]['train_loss']:.0f}" for r in bad)
    return f"{label}: {len(bad)}/{seeds} seeds diverged\nat iteration {its}\n(train loss {losses})"


def _top(runs: list[dict], cap: float = 8.0) -> float:
    """The y-axis top: the highest finite loss plotted (capped), plus a margin."""
    return min(cap, max(float(np.nanmax(np.where(np.isfinite(curve(r)[1]), curve(r)[1], np.nan)))
                        for r in runs)) + 0.3


def figures(runs: list[dict], summary: dict, out: Path, target: float,
            name: str = "celgc_speedup") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    labels = list(summary["methods"])
    top = _top(runs)
    clients = sorted({r["clients"] for r in runs})
    colors = {label: f"C{i}" for i, label in enumerate(labels)}
    paths = []
    out = out / "figures"
    out.mkdir(parents=True, exist_ok=True)

    # (a) iterations to the target against N, and the loss curves behind it
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    ax = axes[0]
    first = None
    for label in labels:
        m = summary["methods"][label]
        its = [m["iterations"][str(n)] for n in clients]
        ns = [n for n, it in zip(clients, its, strict=True) if math.isfinite(it["mean"])]
        mean = np.array([it["mean"] for it in its if math.isfinite(it["mean"])])
        std = np.array([it["std"] for it in its if math.isfinite(it["mean"])])
        slope = m["slope"]
        if not ns:
            ax.plot([], [], "x", color=colors[label], label=f"{label}: target never reached")
            continue
        text = "n/a" if not math.isfinite(slope["mean"]) else f"{slope['mean']:.2f} ± {slope['std']:.2f}"
        ax.plot(ns, mean, "o-", color=colors[label], label=f"{label}: fitted slope {text}")
        ax.fill_between(ns, np.maximum(mean - std, 1), mean + std, color=colors[label], alpha=0.2)
        if first is None and ns[0] == clients[0]:
            first = mean[0] * clients[0]
    if first is not None:
        grid = np.array(clients, float)
        ax.plot(grid, first / grid, "k--", label="linear speedup from N = 1 (slope -1)")
    ax.set(xscale="log", yscale="log", xlabel="clients N (fixed per-client batch)",
           ylabel=f"local iterations to test loss {target}",
           title="iterations to the target vs N (mean ± std over seeds)")
    ax.set_xticks(clients, [str(n) for n in clients])
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.legend(fontsize=7)
    celgc = next((label for label in labels if label == "celgc I=4"), labels[0])
    for n in clients:
        mine = [r for r in runs if r["label"] == celgc and r["clients"] == n]
        _band(axes[1], mine, "iteration", f"N = {n}")
        batch = mine[0].get("batch_size", 1)
        _band(axes[2], mine, "iteration", f"N = {n}", scale=n * batch)
    for ax, xlabel in zip(axes[1:], ("local iterations per client",
                                     "examples processed by all clients (iterations x N x batch)"),
                          strict=True):
        ax.axhline(target, color="k", lw=0.8, ls=":")
        ax.set(xlabel=xlabel, ylabel="test loss of the averaged model", ylim=(None, 4.0),
               title=f"{celgc}: test loss (mean ± std over seeds)")
        ax.legend(fontsize=7)
    axes[2].set_xscale("log")
    fig.tight_layout()
    paths.append(out / f"{name}.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # (b) loss against communication rounds and bytes, every method, one row per N
    fig, axes = plt.subplots(len(clients), 3, figsize=(17, 3.6 * len(clients)), squeeze=False)
    for row, n in enumerate(clients):
        for label in labels:
            mine = [r for r in runs if r["label"] == label and r["clients"] == n]
            size = mine[0]["model_size"]
            for col, (x, scale) in enumerate((("iteration", 1), ("round", 1),
                                              ("round", 2 * n * 4 * size / 1e6))):
                _band(axes[row, col], mine, x, label, colors[label], scale)
        for col, (xlabel, xscale) in enumerate((("local iterations per client", "linear"),
                                                ("communication rounds", "log"),
                                                ("MB communicated (rounds x 2 x N x 4 d)", "log"))):
            axes[row, col].axhline(target, color="k", lw=0.8, ls=":")
            axes[row, col].set(xlabel=xlabel, ylabel="test loss (averaged model)",
                               title=f"N = {n}", ylim=(None, top))
            if xscale == "log":  # symlog: round 0 (the initial model) stays on the axis
                unit = 1 if col == 1 else 2 * n * 4 * runs[0]["model_size"] / 1e6
                axes[row, col].set_xscale("symlog", linthresh=unit)
                axes[row, col].set_xlim(left=0)
        axes[row, 0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / f"{name}_comm.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # (c) the unclipped runs, every seed, marked where they diverge
    unclipped = [label for label in labels if not label.startswith(CLIPPED)]
    fig, axes = plt.subplots(1, len(clients), figsize=(4.2 * len(clients), 4), squeeze=False)
    for ax, n in zip(axes[0], clients, strict=True):
        ref = [r for r in runs if r["label"] == celgc and r["clients"] == n]
        _band(ax, ref, "iteration", celgc, colors[celgc])
        for label in unclipped:
            _band(ax, [r for r in runs if r["label"] == label and r["clients"] == n], "iteration",
                  label, colors[label])
        ax.set(xlabel="local iterations per client", ylabel="test loss of the averaged model",
               title=f"N = {n}: unclipped vs clipped, same eta", ylim=(None, top))
        ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    paths.append(out / f"{name}_unclipped.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def model_size(args) -> int:
    import tasks
    from conf import load_config
    from experiments.celgc import base

    cfg = load_config({**base(args.data, args.model), **setting(args)})
    return sum(p.numel() for p in tasks.make_model(cfg, tasks.task_spec(cfg)).parameters())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="tiny Shakespeare input.txt")
    p.add_argument("--quick", action="store_true", help="N in {1, 2, 4}, T_1 = 256, target 2.5")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--clients", default="1,2,4,8,16")
    p.add_argument("--periods", default="1,4,16")
    p.add_argument("--iterations", type=int, default=768, help="T_1: local iterations at N = 1")
    p.add_argument("--target", type=float, default=2.3, help="test loss the iterations are counted to")
    p.add_argument("--model", default="lstm")
    p.add_argument("--lr", type=float, default=50.0, help="eta")
    p.add_argument("--gamma", type=float, default=5.0, help="gamma (threshold c = gamma / eta)")
    p.add_argument("--batch-size", type=int, default=4, help="per-client batch")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=40)
    p.add_argument("--max-train", type=int, default=4000, help="training sequences in all")
    p.add_argument("--test-examples", type=int, default=256, help="fixed evaluation subset")
    p.add_argument("--workers", type=int, default=1, help="processes; 0 = this one")
    p.add_argument("--replot", action="store_true",
                   help="no runs: tables and figures from <out>/results/<name>.json")
    p.add_argument("--step-scaling", default="none", choices=["none", "sqrt", "linear"],
                   help="eta and gamma times 1, sqrt(N) or N (c = gamma / eta fixed)")
    p.add_argument("--name", default="celgc_speedup", help="file name of the JSON and figures")
    p.add_argument("--out", default="docs")
    return p


def replot(out: Path, target: float | None = None, name: str = "celgc_speedup") -> int:
    """The tables and figures again from the stored runs (``target``: another target loss,
    printed, not stored)."""
    import json

    record = json.loads((out / "results" / f"{name}.json").read_text())
    runs, target = record["runs"], record["summary"]["target"] if target is None else target
    summary = summarise(runs, target)
    print(f"runs of commit {record['commit']}: {record['command']}")
    print(markdown(summary, sorted({r["clients"] for r in runs})))
    for path in figures(runs, summary, out, target, name):
        print(f"figure: {path}")
    return 0


def main(argv=None) -> int:
    import json

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    if args.quick:
        args.clients, args.iterations, args.target = "1,2,4", 256, 2.5
    out = Path(args.out)
    if args.replot:
        return replot(out, args.target if "--target" in argv else None, args.name)
    clients = [int(c) for c in args.clients.split(",")]
    periods = [int(p) for p in args.periods.split(",")]
    seeds = list(range(args.seeds))
    made = provenance("experiments.celgc_speedup", argv)  # before the runs: the code that ran
    todo = jobs(args, clients, periods, seeds)
    size = model_size(args)
    start = time.perf_counter()
    if args.workers > 0:
        with ProcessPoolExecutor(args.workers) as pool:
            done = list(pool.map(run_one, todo))
    else:  # in this process (tests)
        done = [run_one(job) for job in todo]
    runs = [compact({**run, "batch_size": args.batch_size}, job[4]["run.seed"], size)
            for job, run in zip(todo, done, strict=True)]
    summary = summarise(runs, args.target)
    (out / "results").mkdir(parents=True, exist_ok=True)
    record = {**made, "setting": {**vars(args), **setting(args), "model_size": size,
                                  "budget": {str(n): budget(n, args.iterations) for n in clients}},
              "seconds": time.perf_counter() - start, "summary": summary, "runs": runs}
    with open(out / "results" / f"{args.name}.json", "w") as handle:
        json.dump(record, handle)
    print(markdown(summary, clients))
    for path in figures(runs, summary, out, args.target, args.name):
        print(f"figure: {path}")
    print(f"{len(todo)} runs in {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
