"""Gossip-PGA at scale (issue 15, item 2): how the transient stage grows with n and with the
graph's mixing time, on the one-process engine, with figures.

Fashion-MNIST (a fixed training pool of ``--max-train`` images, split Dirichlet(alpha = 0.1)
over the nodes), a small ReLU MLP, one SGD step per iteration; ring and static exponential
graphs; n in ``--nodes``; parallel SGD (H = 1), Gossip SGD, Gossip-PGA (H in
``--periods``), Local SGD (W = I, period ``--local-period``) and Gossip-AGA (H_init =
``--aga-period``, our adaptive rule: ``strategies.schedule``); ``--seeds`` seeds::

    python -m experiments.gossip_scale                  # the full sweep (~35 min, 1 shared core)
    python -m experiments.gossip_scale --quick --out /tmp/gs   # smoke (< 3 min)

Writes ``<out>/results/gossip_scale.json`` (the git commit, the exact command, every run's
evaluated records and per-iteration consensus distance, the transient table, the fitted
exponents, the verdict) and ``<out>/figures/gossip_scale_*.png``.

**Transient stage (our operational definition).** The paper (Chen et al., ICML 2021)
calls transient stage the iterations a decentralized method needs before it reaches
parallel SGD's linear-speedup rate. We measure it on the curve of x̄'s training loss: let
``L_m(t)`` be the training loss of x̄ = (1/n) sum_i x_i for method m, and ``L_par(t)`` that
of parallel SGD with the same seed (same data split, same initial model, same minibatch
seeds), both evaluated on the whole fixed training pool at t = E, 2E, ..., T (E =
``--every``, T = ``--iterations``). Then

    transient(m) = the first evaluated t such that L_m(t') <= (1 + eps) L_par(t') for every
                   evaluated t' >= t, with eps = ``EPS`` = 0.20,

i.e. the iteration after which x̄'s loss *stays* within 20 % of parallel SGD's until the
horizon. A curve that leaves the band again later gets the later iteration; one that is
outside the band at T never entered for good and gets ``None``, reported as "> T" (drawn
as an open marker at T with an arrow in the figures, never dropped). The resolution is E:
a method within the band at every evaluation gets E. eps = 0.20 sits well above the
step-to-step noise of the ratio at this lr and batch (about ±5 % at n = 16); the JSON
also holds the verdict for eps = 0.1 and 0.3.

**Growth exponent.** Per seed, a least-squares fit of log transient = a + b log n on the
ring; a censored point (> T) enters as T, so an exponent fitted through one (at the
largest n) is a lower bound, flagged ``censored``. We also report transient(n_max) /
transient(n_min), a lower bound likewise. The claim (PGA's transient grows more slowly with
n than Gossip SGD's on the ring) holds when PGA's exponent, not censored, is smaller than
Gossip SGD's or its lower bound (means over seeds); when PGA's is censored, or is above a
censored Gossip exponent, the verdict is "inconclusive" (None), not "does not hold".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from experiments.gossip_pga import band, methods, simulate, window_mean
from experiments.provenance import provenance

EPS = 0.20
BASE = {"strategy.name": "gossip_pga", "task.name": "fmnist", "data.partition": "dirichlet",
        "data.alpha": 0.1, "data.min_partition_size": 1, "model.name": "mlp", "model.width": 32,
        "model.depth": 2, "train.lr": 0.1, "train.batch_size": 32, "train.momentum": 0.0,
        "strategy.evaluate_nodes": False}
GRAPHS = ("ring", "exponential")
CLAIM = ("gossip", "pga H=16")  # the claim: PGA's transient grows more slowly with n on the ring


# ------------------------------------------------------------------------------------------
# The measurements (pure functions, tested in tests/test_gossip_scale.py)
# ------------------------------------------------------------------------------------------


def transient_stage(iterations, loss, reference, eps: float = EPS) -> int | None:
    """The first evaluated iteration from which ``loss`` stays <= (1 + eps) x ``reference``
    up to the last one; None if it is outside the band at the last one (never within for
    good). Not finite counts as outside."""
    iterations = np.asarray(iterations)
    loss, reference = np.asarray(loss, dtype=float), np.asarray(reference, dtype=float)
    if not (len(iterations) == len(loss) == len(reference)) or len(iterations) == 0:
        raise ValueError("iterations, loss and reference must be non-empty and of one length.")
    with np.errstate(invalid="ignore", divide="ignore"):
        within = np.isfinite(loss) & (loss <= (1.0 + eps) * reference)
    if not within[-1]:
        return None
    outside = np.flatnonzero(~within)
    return int(iterations[0] if len(outside) == 0 else iterations[outside[-1] + 1])


def growth_exponent(nodes, transients, horizon: int) -> tuple[float, bool]:
    """The slope b of log transient = a + b log n (least squares), and whether a censored
    point (None: > horizon) entered the fit as ``horizon`` (then b is a lower bound when the
    censored points are at the largest n, as they are for a transient growing with n)."""
    nodes = np.asarray(nodes, dtype=float)
    if len(nodes) < 2:
        raise ValueError("An exponent needs at least two values of n.")
    censored = any(t is None for t in transients)
    values = np.array([horizon if t is None else t for t in transients], dtype=float)
    slope = np.polyfit(np.log(nodes), np.log(values), 1)[0]
    return float(slope), censored


def mixing_time(topology: str, n: int) -> float:
    """1 / (1 - beta) of the graph's W (inf for W = I)."""
    from strategies.topology import beta, build_topology

    b = beta(build_topology(topology, n, seed=0, p=0.3)(0))
    return float("inf") if b >= 1 - 1e-12 else 1.0 / (1.0 - b)


# ------------------------------------------------------------------------------------------
# The sweep
# ------------------------------------------------------------------------------------------


def grid(args) -> list[tuple[str, str, dict, list[int]]]:
    """(label, topology, overrides, the n it runs on). Parallel SGD and the claim's methods
    on the ring run on every n; Gossip SGD and PGA H=16 on the exponential graph on
    ``--exp-nodes``; PGA with the other H, Local SGD and AGA on the ring on
    ``--extra-nodes``. Local SGD does not use the graph: topology 'any'."""
    def only(ns):
        return [n for n in args.nodes if n in ns]

    periods = sorted({*args.periods, args.local_period, args.aga_period})
    out = [("parallel", "any", {"strategy.period": 1}, args.nodes)]
    for topology in GRAPHS:
        core = args.nodes if topology == "ring" else only(args.exp_nodes)
        extra = only(args.extra_nodes) if topology == "ring" else []
        for label, overrides in methods(topology, periods):
            if label in CLAIM:
                out.append((label, topology, overrides, core))
            elif label.startswith("pga") and int(label.split("=")[1]) in args.periods:
                out.append((label, topology, overrides, extra))
            elif label == f"aga H0={args.aga_period}":
                out.append((label, topology, overrides, extra))
            elif label == f"local_sgd H={args.local_period}" and topology == "ring":
                out.append((label, "any", overrides, extra))
    return [row for row in out if row[3]]


def jobs(args) -> list[dict]:
    """Every run, ordered by seed then n (the engine caches a seed's data split per n)."""
    from conf import load_config

    base = {**BASE, "task.name": args.task, "data.max_train": args.max_train,
            "model.width": args.width}
    out = []
    for seed in range(args.seeds):
        for n in args.nodes:
            for label, topology, overrides, ns in grid(args):
                if n in ns:
                    cfg = load_config({**base, **overrides, "run.seed": seed})
                    out.append({"label": label, "topology": topology, "overrides": overrides,
                                "seed": seed, "nodes": n, "cfg": cfg})
    return out


SAME_SETTINGS = ("task", "max_train", "width", "iterations", "every", "base")


def extend(todo: list[dict], path: Path, args) -> tuple[list[dict], list[dict], dict]:
    """The jobs of ``todo`` not yet in the results file at ``path``, its runs (each marked
    with the commit it ran at), and that file's provenance; refuses a file whose settings
    differ from these (its runs would not be comparable)."""
    saved = json.loads(path.read_text())
    wanted = {"task": args.task, "max_train": args.max_train, "width": args.width,
              "iterations": args.iterations, "every": args.every, "base": BASE}
    differ = [key for key in SAME_SETTINGS if saved.get(key) != wanted[key]]
    if differ:
        raise ValueError(f"{path} was made with other settings ({', '.join(differ)}); "
                         "--extend adds runs only to a sweep of the same settings.")
    key = lambda r: (r["label"], r["topology"], r["nodes"], r["seed"])  # noqa: E731
    kept = [dict(r, commit=r.get("commit", saved.get("commit"))) for r in saved["runs"]]
    have = {key(r) for r in kept}
    earlier = {k: saved.get(k) for k in ("commit", "uncommitted_code", "command")}
    return [job for job in todo if key(job) not in have], kept, earlier


def run_job(job: dict, iterations: int, every: int) -> dict:
    meta = {k: v for k, v in job.items() if k != "cfg"}
    result = simulate(job["cfg"], job["nodes"], iterations, every, **meta)
    for key in ("modelled_bytes_per_node", "modelled_hops"):  # not needed here; keep the JSON small
        result.pop(key, None)
    return result


def transients(results: list[dict], eps: float) -> list[dict]:
    """One row per run other than parallel SGD: its transient against the same seed's and
    n's parallel SGD."""
    reference = {(r["seed"], r["nodes"]): r for r in results if r["label"] == "parallel"}
    rows = []
    for r in results:
        par = reference.get((r["seed"], r["nodes"]))
        if r["label"] == "parallel" or par is None:
            continue
        its = [x["iteration"] for x in r["records"]]
        if its != [x["iteration"] for x in par["records"]]:
            raise ValueError("A run and its parallel SGD reference were evaluated at different iterations.")
        t = transient_stage(its, [x["xbar_train_loss"] for x in r["records"]],
                            [x["xbar_train_loss"] for x in par["records"]], eps)
        for topology in (GRAPHS if r["topology"] == "any" else (r["topology"],)):
            rows.append({"label": r["label"], "topology": topology, "nodes": r["nodes"],
                         "seed": r["seed"], "transient": t})
    return rows


def table(rows: list[dict], horizon: int) -> list[dict]:
    """Mean ± std over seeds per (method, graph, n); a censored seed makes the mean a lower
    bound (it enters as the horizon) and is counted in ``censored``."""
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault((row["label"], row["topology"], row["nodes"]), []).append(row["transient"])
    out = []
    for (label, topology, n), ts in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        values = np.array([horizon if t is None else t for t in ts], dtype=float)
        out.append({"label": label, "topology": topology, "nodes": n, "seeds": len(ts),
                    "mean": float(values.mean()), "std": float(values.std()),
                    "censored": sum(t is None for t in ts), "values": ts})
    return out


def exponents(rows: list[dict], horizon: int, topology: str = "ring") -> dict:
    """Per method (every method run on >= 2 values of n on ``topology``): the per-seed
    growth exponents, their mean ± std, and the ratio transient(n_max) / transient(n_min)."""
    out = {}
    for label in sorted({r["label"] for r in rows if r["topology"] == topology}):
        per_seed, ratios, censored = [], [], False
        for seed in sorted({r["seed"] for r in rows}):
            mine = sorted((r["nodes"], r["transient"]) for r in rows if r["label"] == label
                          and r["topology"] == topology and r["seed"] == seed)
            if len(mine) < 2:
                continue
            slope, cens = growth_exponent([n for n, _ in mine], [t for _, t in mine], horizon)
            per_seed.append(slope)
            censored |= cens
            first, last = (horizon if t is None else t for t in (mine[0][1], mine[-1][1]))
            ratios.append(last / first)
        if per_seed:
            out[label] = {"per_seed": per_seed, "mean": float(np.mean(per_seed)) + 0.0,  # no -0.00
                          "std": float(np.std(per_seed)), "censored": censored,
                          "ratio_max_min": float(np.mean(ratios)), "ratio_std": float(np.std(ratios))}
    return out


def verdict(fits: dict) -> dict:
    gossip, pga = (fits.get(label) for label in CLAIM)
    if gossip is None or pga is None:
        return {"holds": None, "why": "the claim's methods were not run on >= 2 values of n"}
    if pga["censored"]:
        return {"holds": None, "why": "PGA's transient exceeds the horizon at some n: its "
                "exponent is only a lower bound, so the comparison is inconclusive"}
    why = (f"ring: PGA H=16 exponent {pga['mean']:.2f} ± {pga['std']:.2f} vs Gossip SGD "
           f"{'>= ' if gossip['censored'] else ''}{gossip['mean']:.2f} ± {gossip['std']:.2f}")
    if pga["mean"] < gossip["mean"]:
        return {"holds": True, "why": why}
    if gossip["censored"]:  # a lower bound above PGA's would confirm; below it says nothing
        return {"holds": None, "why": why + " (Gossip SGD's is only a lower bound: inconclusive)"}
    return {"holds": False, "why": why}


def final_gap(results: list[dict], last: int = 4) -> list[dict]:
    """A measure with no threshold and no censoring: x̄'s training loss over parallel SGD's
    (same seed and n), averaged over the ``last`` evaluations; mean ± std over seeds."""
    reference = {(r["seed"], r["nodes"]): r for r in results if r["label"] == "parallel"}
    groups: dict[tuple, list] = {}
    for r in results:
        par = reference.get((r["seed"], r["nodes"]))
        if r["label"] == "parallel" or par is None:
            continue
        ratio = np.divide([x["xbar_train_loss"] for x in r["records"][-last:]],
                          [x["xbar_train_loss"] for x in par["records"][-last:]])
        groups.setdefault((r["label"], r["topology"], r["nodes"]), []).append(float(ratio.mean()))
    return [{"label": k[0], "topology": k[1], "nodes": k[2], "mean": float(np.mean(v)),
             "std": float(np.std(v)), "seeds": len(v)} for k, v in sorted(groups.items())]


def sensitivity(results: list[dict], horizon: int, values=(0.1, 0.3)) -> dict:
    """The ring exponents and the verdict with other band widths eps."""
    out = {}
    for eps in values:
        fits = exponents(transients(results, eps), horizon)
        out[str(eps)] = {"exponents": {k: {f: v[f] for f in ("mean", "std", "censored")}
                                       for k, v in fits.items()}, "verdict": verdict(fits)}
    return out


# ------------------------------------------------------------------------------------------
# Figures (read only the results)
# ------------------------------------------------------------------------------------------

COLOURS = {"parallel": "k", "gossip": "tab:red", "pga H=4": "tab:cyan", "pga H=16": "tab:blue",
           "pga H=64": "tab:purple", "local_sgd": "tab:orange", "aga": "tab:green"}


def colour(label: str) -> str:
    return COLOURS.get(label) or COLOURS.get(label.split()[0], "tab:gray")


def _band(ax, xs, series, label, **style):
    band(ax, xs, series, label, color=colour(label), **style)


def _runs(results, label, topology, n):
    return [r for r in results if r["label"] == label and r["nodes"] == n
            and r["topology"] in (topology, "any")]


def figures(data: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    results, horizon, eps = data["runs"], data["iterations"], data["eps"]
    nodes = data["nodes"]
    labels = sorted({r["label"] for r in results}, key=lambda s: (s != "parallel", s))
    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rows = {(r["label"], r["topology"], r["nodes"], r["seed"]): r["transient"] for r in data["transients"]}

    # (a) x̄'s training loss, and its ratio to parallel SGD's, per graph and n
    for kind in ("loss", "ratio"):
        fig, axes = plt.subplots(len(GRAPHS), len(nodes), figsize=(4.2 * len(nodes), 4.2 * len(GRAPHS)),
                                 squeeze=False, sharey="row")
        for row, topology in enumerate(GRAPHS):
            for col, n in enumerate(nodes):
                ax = axes[row, col]
                if not any(_runs(results, label, topology, n) for label in labels if label != "parallel"):
                    ax.set_visible(False)  # e.g. the exponential graph, run on fewer n
                    continue
                par = {r["seed"]: r for r in _runs(results, "parallel", topology, n)}
                for label in labels:
                    runs = _runs(results, label, topology, n)
                    if not runs or (kind == "ratio" and label == "parallel"):
                        continue
                    xs = [x["iteration"] for x in runs[0]["records"]]
                    loss = [[x["xbar_train_loss"] for x in r["records"]] for r in runs]
                    if kind == "ratio":
                        loss = [np.divide(curve, [x["xbar_train_loss"] for x in par[r["seed"]]["records"]])
                                for curve, r in zip(loss, runs, strict=True)]
                    _band(ax, xs, loss, label, linewidth=1.2 if label in (*CLAIM, "parallel") else 0.8)
                    ts = [rows.get((label, topology, n, r["seed"]), "absent") for r in runs]
                    finite = [t for t in ts if isinstance(t, int)]
                    if kind == "ratio" and finite and len(finite) == len(ts):
                        ax.axvline(np.mean(finite), color=colour(label), linestyle=":", linewidth=0.8)
                if kind == "ratio":
                    ax.axhline(1 + eps, color="gray", linestyle="--", linewidth=0.8)
                    ax.text(xs[-1], 1 + eps, f"1 + eps = {1 + eps:.2f}", ha="right", va="bottom", fontsize=7)
                ax.set(yscale="log", xlabel="iteration", title=f"{topology}, n = {n}",
                       ylabel="x̄ train loss" if kind == "loss" else "x̄ loss / parallel SGD's")
                if col == 0:
                    ax.legend(fontsize=6)
        for ax in axes.ravel():  # a hidden first panel takes the shared y labels with it
            ax.yaxis.set_tick_params(labelleft=ax.get_visible())
        what = ("training loss of x̄ (mean ± std over seeds)" if kind == "loss" else
                "x̄'s training loss / parallel SGD's (same seed); dotted: mean transient stage")
        fig.suptitle(f"Gossip-PGA at scale, {data['task']} Dirichlet(0.1): {what}")
        fig.tight_layout()
        paths.append(folder / f"gossip_scale_{kind}.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)

    # (b) transient vs n, (c) transient vs 1/(1 - beta): log-log, censored points open at T
    fits, claim = data["exponents"], data["verdict"]
    for kind in ("nodes", "mixing"):
        fig, axes = plt.subplots(1, 1 if kind == "mixing" else len(GRAPHS),
                                 figsize=(8, 5.5) if kind == "mixing" else (12, 5.5), squeeze=False)
        for col, topology in enumerate(GRAPHS):
            ax = axes[0, 0 if kind == "mixing" else col]
            for label in labels:
                if label == "parallel" or (kind == "mixing" and label.startswith("local_sgd")):
                    continue
                points = []
                for n in nodes:
                    ts = [t for (lab, top, m, _), t in rows.items()
                          if lab == label and top == topology and m == n]
                    if ts:
                        points.append((n, ts))
                if not points:
                    continue
                xs = np.array([n if kind == "nodes" else mixing_time(topology, n) for n, _ in points])
                values = [np.array([horizon if t is None else t for t in ts], float) for _, ts in points]
                mean = np.array([v.mean() for v in values])
                std = np.array([v.std() for v in values])
                censored = np.array([any(t is None for t in ts) for _, ts in points])
                style = "-" if topology == "ring" else "--"
                name = label if kind == "nodes" else f"{label}, {topology}"
                if kind == "nodes" and label in fits and topology == "ring":
                    fit = fits[label]
                    name += f" (b {'>=' if fit['censored'] else '='} {fit['mean']:.2f} ± {fit['std']:.2f})"
                ax.plot(xs, mean, style, marker="o" if topology == "ring" else "s", color=colour(label),
                        label=name, markersize=4)
                ax.fill_between(xs, np.maximum(mean - std, 1), mean + std, color=colour(label),
                                alpha=0.15, linewidth=0)
                if censored.any():
                    ax.scatter(xs[censored], mean[censored], s=70, facecolors="white",
                               edgecolors=colour(label), zorder=3)
                    for x in xs[censored]:
                        ax.annotate("", (x, horizon * 1.35), (x, horizon),
                                    arrowprops={"arrowstyle": "->", "color": colour(label)})
            ax.axhline(horizon, color="gray", linestyle=":", linewidth=0.8)
            ax.text(ax.get_xlim()[0] if kind == "mixing" else nodes[0], horizon,
                    " horizon T: open = never within", fontsize=7, va="bottom")
            ax.set(xscale="log", yscale="log", ylim=(data["every"] * 0.7, horizon * 2),
                   ylabel=f"transient stage (iterations until x̄ loss <= {1 + eps:.2f} x parallel's)")
            if kind == "nodes":
                ax.set(xlabel="nodes n", title=f"{topology} graph")
                ax.set_xticks(nodes, [str(n) for n in nodes])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            else:
                ax.set(xlabel="1 / (1 - beta)  (ring: solid, exponential: dashed)",
                       title="transient stage vs the graph's mixing time")
            ax.legend(fontsize=7)
        verdict_line = {True: "holds", False: "does not hold", None: "inconclusive"}[claim["holds"]]
        fig.suptitle(f"Claim (PGA's transient grows more slowly with n than Gossip SGD's on the ring): "
                     f"{verdict_line}.\n{claim['why']}", fontsize=9)
        fig.tight_layout()
        paths.append(folder / f"gossip_scale_transient_vs_{kind}.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)

    # consensus distance on the ring, mean over blocks of 16 iterations (Local SGD's
    # saw-tooth would otherwise squash the rest), log scale
    fig, axes = plt.subplots(1, len(nodes), figsize=(4.2 * len(nodes), 3.6), squeeze=False, sharey=True)
    for col, n in enumerate(nodes):
        ax = axes[0, col]
        for label in labels:
            runs = _runs(results, label, "ring", n)
            if not runs or label == "parallel":
                continue
            block = 16 if len(runs[0]["consensus_distance"]) >= 64 else 1
            series = [window_mean(r["consensus_distance"], block) for r in runs]
            xs = (np.arange(len(series[0])) + 1) * block
            _band(ax, xs, series, label, linewidth=0.9,
                  linestyle=":" if label.startswith("local_sgd") else "-")
        ax.set(yscale="log", xlabel="iteration", title=f"ring, n = {n}",
               ylabel="consensus distance (block mean)")
        if col == 0:
            ax.legend(fontsize=6)
    fig.suptitle("(1/n) Σ‖x_i − x̄‖² after mixing, mean over blocks of 16 iterations, "
                 "mean ± std over seeds (log scale)")
    fig.tight_layout()
    paths.append(folder / "gossip_scale_consensus.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def markdown(data: dict) -> str:
    horizon = data["iterations"]
    lines = ["| graph | method | " + " | ".join(f"n = {n}" for n in data["nodes"]) + " |",
             "|" + " --- |" * (2 + len(data["nodes"]))]
    cells: dict[tuple, dict] = {}
    for row in data["table"]:
        cells.setdefault((row["topology"], row["label"]), {})[row["nodes"]] = row
    for (topology, label), by_n in cells.items():
        out = []
        for n in data["nodes"]:
            row = by_n.get(n)
            if row is None:
                out.append("–")
            elif row["censored"] == row["seeds"]:
                out.append(f"> {horizon}")
            else:
                mark = f" ({row['censored']}/{row['seeds']} > {horizon})" if row["censored"] else ""
                out.append(f"{'>= ' if row['censored'] else ''}{row['mean']:.0f} ± {row['std']:.0f}{mark}")
        lines.append(f"| {topology} | {label} | " + " | ".join(out) + " |")
    lines += ["", "x̄'s loss / parallel SGD's, mean of the last 4 evaluations:", "",
              "| graph | method | " + " | ".join(f"n = {n}" for n in data["nodes"]) + " |",
              "|" + " --- |" * (2 + len(data["nodes"]))]
    gaps: dict[tuple, dict] = {}
    for row in final_gap(data["runs"]):
        gaps.setdefault((row["topology"], row["label"]), {})[row["nodes"]] = row
    for (topology, label), by_n in gaps.items():
        lines.append(f"| {topology} | {label} | " + " | ".join(
            f"{by_n[n]['mean']:.3f} ± {by_n[n]['std']:.3f}" if n in by_n else "–"
            for n in data["nodes"]) + " |")
    lines += ["", "| method (ring) | exponent b (mean ± std over seeds) | "
              "transient(n_max) / transient(n_min) |", "| --- | --- | --- |"]
    for label, fit in data["exponents"].items():
        lines.append(f"| {label} | {'>= ' if fit['censored'] else ''}{fit['mean']:.2f} ± {fit['std']:.2f} | "
                     f"{fit['ratio_max_min']:.1f} ± {fit['ratio_std']:.1f} |")
    lines.append(f"\nclaim holds: {data['verdict']['holds']} ({data['verdict']['why']})")
    for eps, other in data.get("sensitivity", {}).items():
        lines.append(f"with eps = {eps}: holds {other['verdict']['holds']} ({other['verdict']['why']})")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: n = 16, 32, one seed, 100 iterations, the claim's methods")
    parser.add_argument("--nodes", type=_ints, default=[16, 32, 64, 128])
    parser.add_argument("--exp-nodes", type=_ints, default=[16, 32],
                        help="the n on which the exponential graph runs")
    parser.add_argument("--extra-nodes", type=_ints, default=[16],
                        help="the n on which PGA H != 16, Local SGD and AGA also run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=160)
    parser.add_argument("--every", type=int, default=10, help="evaluate x̄ every N iterations")
    parser.add_argument("--periods", type=_ints, default=[4, 16, 64], help="Gossip-PGA's H")
    parser.add_argument("--local-period", type=int, default=16)
    parser.add_argument("--aga-period", type=int, default=4, help="Gossip-AGA's H_init")
    parser.add_argument("--eps", type=float, default=EPS)
    parser.add_argument("--task", default="fmnist")
    parser.add_argument("--max-train", type=int, default=12000, help="the training pool")
    parser.add_argument("--width", type=int, default=32, help="the MLP's hidden width")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--extend", action="store_true",
                        help="keep the runs already in <out>/results/gossip_scale.json (same "
                             "settings) and run only the missing (method, graph, n, seed)")
    parser.add_argument("--replot", action="store_true",
                        help="no runs: redraw the figures and the table from <out>/results/gossip_scale.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.exp_nodes, args.extra_nodes = [16, 32], [16], []
        args.seeds, args.iterations = 1, 100
    if 16 not in args.periods:
        parser.error("--periods must include 16 (the claim's H).")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    out = Path(args.out)
    if args.replot:
        data = json.loads((out / "results" / "gossip_scale.json").read_text())
        print(markdown(data))
        for path in figures(data, out):
            print(f"figure: {path}")
        return 0
    made = provenance("experiments.gossip_scale", argv)  # before the runs: others commit meanwhile
    todo, kept, earlier = jobs(args), [], None
    if args.extend:
        todo, kept, earlier = extend(todo, out / "results" / "gossip_scale.json", args)
    print(f"{len(todo)} runs", flush=True)
    start = time.perf_counter()
    results = []
    if args.workers == 1:
        for k, job in enumerate(todo):
            results.append(run_job(job, args.iterations, args.every))
            print(f"[{k + 1}/{len(todo)}] seed {job['seed']} n = {job['nodes']} {job['topology']} "
                  f"{job['label']}: {results[-1]['seconds']:.0f} s", flush=True)
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(run_job, todo, [args.iterations] * len(todo),
                                    [args.every] * len(todo)))
    for run in results:
        run["commit"] = made["commit"]
    results = kept + results
    rows = transients(results, args.eps)
    fits = exponents(rows, args.iterations)
    data = {
        **made, "earlier": earlier, "base": BASE, "task": args.task, "max_train": args.max_train,
        "width": args.width, "nodes": args.nodes, "exp_nodes": args.exp_nodes,
        "extra_nodes": args.extra_nodes,
        "seeds": args.seeds, "iterations": args.iterations, "every": args.every, "eps": args.eps,
        "mixing_time": {t: {n: mixing_time(t, n) for n in args.nodes} for t in GRAPHS},
        "seconds": time.perf_counter() - start,
        "transients": rows, "table": table(rows, args.iterations), "exponents": fits,
        "verdict": verdict(fits), "sensitivity": sensitivity(results, args.iterations),
        "final_gap": final_gap(results),
        "runs": results,
    }
    (out / "results").mkdir(parents=True, exist_ok=True)
    with open(out / "results" / "gossip_scale.json", "w") as handle:
        json.dump(data, handle)
    print(markdown(data))
    for path in figures(data, out):
        print(f"figure: {path}")
    print(f"{len(results)} runs in {data['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
