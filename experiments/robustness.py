"""Robust aggregation against simulated attackers: every rule x every attack x attacker
fraction, on the one-process engine, with figures and tables (docs/robustness.md).

10 clients (Dirichlet 0.5; ``--tasks digits_iid`` / ``fmnist_iid``: IID), ``run.rounds``
rounds of FedAvg; the clients with the lowest partition-ids, floor(fraction x 10) of them,
attack (``client/attacks.py``); the server combines the updates with
``strategy.aggregator``. The defender's knobs follow
the attacker count, which the defender is told (the best case for Krum and the trimmed
mean):

- ``strategy.byzantine`` = the number of attackers (Krum's and Multi-Krum's f);
- ``strategy.trim_fraction`` = max(0.1, fraction), at most 0.4 (cut from each end);
- ``attack.scale`` = 10 for ``sign_flip`` / ``scale`` (``--attacks sign_flip_x1``: a sign
  flip with scale 1; the BGMD authors' bit-flip is -s g with s = 2 to 5);
  ``attack.std`` = 10 (the default, BGMD's additive attack);
- ``weight_inflation`` runs with ``strategy.weighting='examples'`` (each claim capped at
  ``strategy.max_examples``): under the default uniform weighting it is a no-op.

Fraction 0 is one clean run (``attack.kind='none'``) per rule and seed. ``bgmd`` is the
paper's rule (error-feedback memory = the mean of the residual rows); ``bgmd_median`` is
``bgmd`` with ``strategy.bgmd_memory='median'`` (ours). The ``*_nnm`` ids put Nearest
Neighbour Mixing before the rule (``strategy.pre_aggregation='nnm'``, Allouah et al. 2023;
its f is the same known attacker count); the others run the bare rule
(``strategy.pre_aggregation='none'``).

Each finished run is appended as one JSON line to ``<out>/results/robustness_runs.jsonl``;
runs already there are skipped, so a killed sweep continues where it stopped::

    python -m experiments.robustness --tasks digits --jobs 1
    python -m experiments.robustness --tasks fmnist --fractions 0,0.2,0.4 \\
        --attacks sign_flip,gaussian,zero_model
    python -m experiments.robustness --plot-only          # figures + tables from the file
    python -m experiments.robustness --tasks digits --rounds 2 --seeds 0 \\
        --aggregators mean,median --attacks sign_flip --out /tmp/rob   # smoke

Writes ``<out>/results/robustness_<task>.json`` (mean, min, max over seeds per cell),
``<out>/figures/robustness_<task>.png``, and the tables: printed, and written between the
``<!-- robustness-tables:begin -->`` / ``end`` markers of ``<out>/robustness.md`` when
that file has them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

CLIENTS = 10
TASKS = ("digits", "fmnist")
EXTRA_TASKS = {"digits_iid": "digits", "fmnist_iid": "fmnist"}  # data.partition = iid
ATTACKS = ("sign_flip", "scale", "gaussian", "zero_model", "weight_inflation", "free_rider", "nan")
EXTRA_ATTACKS = {"sign_flip_x1": "sign_flip"}  # not in the default grid: attack.scale = 1
BARE = {  # id -> (strategy.aggregator, strategy.bgmd_memory, label)
    "mean": ("mean", "mean", "mean"),
    "median": ("median", "mean", "median"),
    "trimmed_mean": ("trimmed_mean", "mean", "trimmed_mean"),
    "krum": ("krum", "mean", "krum"),
    "multi_krum": ("multi_krum", "mean", "multi_krum"),
    "geometric_median": ("geometric_median", "mean", "geometric_median"),
    "bgmd": ("bgmd", "mean", "bgmd"),
    "bgmd_median": ("bgmd", "median", "bgmd (median memory)"),
}
MIXED = ("median", "trimmed_mean", "multi_krum", "geometric_median", "bgmd")  # <id>_nnm
# id -> (strategy.aggregator, strategy.bgmd_memory, label, strategy.pre_aggregation)
AGGREGATORS = {**{a: (*v, "none") for a, v in BARE.items()},
               **{f"{a}_nnm": (BARE[a][0], BARE[a][1], f"NNM + {BARE[a][2]}", "nnm") for a in MIXED}}
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4)
MARKERS = ("<!-- robustness-tables:begin -->", "<!-- robustness-tables:end -->")


def num_attackers(fraction: float) -> int:
    from client.attacks import num_attackers as count

    return count(fraction, CLIENTS)


def overrides(task: str, seed: int, fraction: float, attack: str, aggregator: str) -> dict:
    """The config of one run: the rule and attack, and the defender's knobs set from the
    attacker count (module docstring)."""
    rule, memory, _, pre = AGGREGATORS[aggregator]
    f = num_attackers(fraction) if attack != "none" else 0
    cfg = {"task.name": EXTRA_TASKS.get(task, task), "run.seed": seed, "strategy.aggregator": rule,
           "strategy.bgmd_memory": memory, "strategy.pre_aggregation": pre, "strategy.byzantine": f,
           "strategy.trim_fraction": min(0.4, max(0.1, fraction)),
           "attack.kind": EXTRA_ATTACKS.get(attack, attack),
           "attack.fraction": fraction if attack != "none" else 0.0}
    if attack in ("sign_flip", "scale"):
        cfg["attack.scale"] = 10.0
    if attack == "sign_flip_x1":
        cfg["attack.scale"] = 1.0
    if attack == "weight_inflation":
        cfg["strategy.weighting"] = "examples"
    if task in EXTRA_TASKS:
        cfg["data.partition"] = "iid"
    return cfg


def plan(tasks, seeds, fractions, attacks, aggregators, rounds) -> list[dict]:
    """Every run of the grid, ordered by task and seed (a worker caches one task's data and
    partitions per seed, so runs that share them should follow each other)."""
    jobs = []
    for task in tasks:
        for seed in seeds:
            for fraction in fractions:
                for attack in (["none"] if fraction == 0 else attacks):
                    for agg in aggregators:
                        jobs.append({"task": task, "seed": seed, "fraction": float(fraction),
                                     "attack": attack, "aggregator": agg, "rounds": rounds,
                                     "clients": CLIENTS})
    return jobs


def key(run: dict) -> tuple:
    return (run["task"], run["seed"], run["fraction"], run["attack"], run["aggregator"],
            run["rounds"], run["clients"])


def _init_worker() -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)


def run_one(job: dict) -> dict:
    from conf import load_config
    from engine import run

    config = overrides(job["task"], job["seed"], job["fraction"], job["attack"], job["aggregator"])
    cfg = load_config({**config, "run.rounds": job["rounds"]})
    start, cpu = time.perf_counter(), time.process_time()
    records = run(cfg, job["clients"], evaluate_every=job["rounds"]).records
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    seconds = [r["aggregation_seconds"] for r in records if "aggregation_seconds" in r]
    return {**job, "config": config,
            "test_accuracy": records[-1].get("test_accuracy", float("nan")),
            "test_loss": records[-1].get("test_loss", float("nan")),
            "final_train_loss": records[-1]["train_loss"],
            "aggregation_seconds": float(np.mean(seconds)) if seconds else float("nan"),
            "rejected_rounds": int(sum(r["aggregate_rejected"] for r in records)),
            "min_replies": int(min(r["num_replies"] for r in records)),
            "gm_unconverged_rounds": int(sum(r.get("gm_converged", 1.0) == 0.0 for r in records)),
            "gm_iterations": float(np.mean([r.get("gm_iterations", 0.0) for r in records])),
            "wall_seconds": wall, "cpu_seconds": cpu}


def load_runs(path: Path) -> list[dict]:
    """The runs in the results file; a line cut short by a kill is ignored (and redone)."""
    if not path.exists():
        return []
    runs = []
    for line in path.read_text().splitlines():
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return runs


def sweep(jobs: list[dict], path: Path, workers: int) -> int:
    """Run the jobs not yet in ``path``, appending each as it finishes; returns how many ran."""
    done = {key(r) for r in load_runs(path)}
    todo = [j for j in jobs if key(j) not in done]
    print(f"{len(todo)} runs to do, {len(jobs) - len(todo)} of the grid already in {path}", flush=True)
    if not todo:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "a") as handle:  # end a line cut short by a kill
            handle.write("\n")
    os.environ["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, initializer=_init_worker) as pool, open(path, "a") as handle:
        futures = [pool.submit(run_one, job) for job in todo]
        for n, future in enumerate(as_completed(futures), 1):
            run = future.result()
            handle.write(json.dumps(run) + "\n")
            handle.flush()
            elapsed = time.perf_counter() - start
            print(f"[{n}/{len(todo)}] {run['task']} s{run['seed']} {run['attack']} "
                  f"{run['fraction']:.1f} {run['aggregator']}: acc {run['test_accuracy']:.3f} "
                  f"({run['wall_seconds']:.1f} s; eta {elapsed / n * (len(todo) - n) / 60:.0f} min)",
                  flush=True)
    return len(todo)


def summarise(runs: list[dict]) -> dict:
    """{task: {(attack, fraction, aggregator): stats over seeds}} (JSON-friendly lists)."""
    cells: dict = {}
    for r in runs:
        cell = (r["attack"], r["fraction"], r["aggregator"])
        cells.setdefault(r["task"], {}).setdefault(cell, []).append(r)
    out = {}
    for task, groups in cells.items():
        rows = []
        for (attack, fraction, agg), rs in sorted(groups.items()):
            acc = np.array([r["test_accuracy"] for r in rs], float)
            rows.append({"attack": attack, "fraction": fraction, "aggregator": agg,
                         "seeds": sorted(r["seed"] for r in rs), "rounds": rs[0]["rounds"],
                         "accuracy_mean": float(np.mean(acc)), "accuracy_min": float(np.min(acc)),
                         "accuracy_max": float(np.max(acc)),
                         "aggregation_seconds": float(np.mean([r["aggregation_seconds"] for r in rs])),
                         "rejected_rounds": int(sum(r["rejected_rounds"] for r in rs)),
                         "gm_unconverged_rounds": int(sum(r.get("gm_unconverged_rounds", 0) for r in rs)),
                         "wall_seconds": float(np.mean([r["wall_seconds"] for r in rs]))})
        out[task] = rows
    return out


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    text = f"{row['accuracy_mean']:.3f}"
    if row["accuracy_max"] > row["accuracy_min"]:
        text += f" ({row['accuracy_min']:.2f}-{row['accuracy_max']:.2f})"
    return text + (" †" if row["rejected_rounds"] else "")


def _seeds(cells) -> str:
    seeds = {tuple(c["seeds"]) for c in cells}
    if len(seeds) == 1:
        (only,) = seeds
        return f"seed{'s' if len(only) > 1 else ''} {', '.join(map(str, only))}"
    return "seeds " + " or ".join(", ".join(map(str, s)) for s in sorted(seeds, key=len)) + " (see cells)"


def tables(summary: dict) -> str:
    """Markdown: per task, the clean run (accuracy and seconds per round) and one table of
    accuracy per attacker fraction (rows: rules, columns: attacks)."""
    parts = []
    for task, rows in summary.items():
        index = {(r["attack"], r["fraction"], r["aggregator"]): r for r in rows}
        aggs = [a for a in AGGREGATORS if any(r["aggregator"] == a for r in rows)]
        attacks = [a for a in (*ATTACKS, *EXTRA_ATTACKS) if any(r["attack"] == a for r in rows)]
        head = f"{task}, {CLIENTS} clients, {rows[0]['rounds']} rounds"
        clean = [a for a in aggs if ("none", 0.0, a) in index]
        if clean:
            parts += [f"**{head}: no attack, {_seeds(index[('none', 0.0, a)] for a in clean)}.** "
                      "Final test accuracy, mean (min-max) over seeds, and "
                      "the server's aggregation time per round.", "",
                      "| rule | test accuracy | aggregation ms / round |", "| --- | --- | --- |"]
            parts += [f"| {AGGREGATORS[a][2]} | {_cell(index[('none', 0.0, a)])} | "
                      f"{1e3 * index[('none', 0.0, a)]['aggregation_seconds']:.2f} |" for a in clean]
            parts.append("")
        for fraction in sorted({r["fraction"] for r in rows} - {0.0}):
            f = num_attackers(fraction)
            cells = [r for r in rows if r["fraction"] == fraction]
            parts += [f"**{head}: {f} of {CLIENTS} attackers ({fraction:.0%}), {_seeds(cells)}.** "
                      "Final test accuracy, mean (min-max) over seeds.", "",
                      "| rule | " + " | ".join(attacks) + " |", "| --- |" + " --- |" * len(attacks)]
            parts += [f"| {AGGREGATORS[a][2]} | "
                      + " | ".join(_cell(index.get((k, fraction, a))) for k in attacks) + " |"
                      for a in aggs]
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def figure(task: str, rows: list[dict], out: Path) -> Path:
    """Accuracy vs attacker fraction, one panel per attack (fraction 0 = the clean run), one
    line per rule, bars = min-max over seeds; last panel: aggregation time per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = {(r["attack"], r["fraction"], r["aggregator"]): r for r in rows}
    aggs = [a for a in AGGREGATORS if any(r["aggregator"] == a for r in rows)]
    attacks = [a for a in (*ATTACKS, *EXTRA_ATTACKS) if any(r["attack"] == a for r in rows)]
    panels = len(attacks) + 1
    cols = min(4, panels)
    nrows = -(-panels // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows), squeeze=False)
    for ax, attack in zip(axes.flat, attacks, strict=False):
        for n, agg in enumerate(aggs):
            pts = [index.get(("none", 0.0, agg))] + [index[k] for k in sorted(index)
                                                      if k[0] == attack and k[2] == agg]
            pts = [p for p in pts if p is not None]
            x = np.array([p["fraction"] for p in pts]) + (n - len(aggs) / 2) * 0.003
            y = np.array([p["accuracy_mean"] for p in pts])
            low, high = ([p[k] for p in pts] for k in ("accuracy_min", "accuracy_max"))
            err = np.maximum([y - low, high - y], 0.0)  # the mean of equal values can round past them
            base = agg.removesuffix("_nnm")  # NNM + a rule: the rule's colour, dotted
            ax.errorbar(x, y, yerr=err, marker="s" if base != agg else "o", ms=3, capsize=2, lw=1.2,
                        ls=":" if base != agg else "--" if agg.startswith("bgmd") else "-",
                        label=AGGREGATORS[agg][2],
                        color=f"C{list(AGGREGATORS).index(base)}")  # one colour per rule everywhere
        ax.set(title=attack, xlabel="attacker fraction", ylabel="final test accuracy", ylim=(0, 1))
        ax.grid(alpha=0.3)
    ax = axes.flat[len(attacks)]
    clean = [a for a in aggs if ("none", 0.0, a) in index]
    if clean:
        ax.barh([AGGREGATORS[a][2] for a in clean],
                [1e3 * index[("none", 0.0, a)]["aggregation_seconds"] for a in clean])
        ax.set(xscale="log", xlabel="aggregation ms / round (no attack)", title="server cost")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    spare = list(axes.flat)[panels:]
    for extra in spare:
        extra.axis("off")
    if spare:  # the legend in the first empty panel, else under the panels
        spare[0].legend(handles, labels, loc="center", fontsize=10)
    else:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=9)
    split = "IID" if task in EXTRA_TASKS else "Dirichlet 0.5"
    fig.suptitle(f"{task}: {CLIENTS} clients, {split}, {rows[0]['rounds']} rounds; "
                 "mean and min-max over seeds")
    fig.tight_layout(rect=(0, 0 if spare else 0.05, 1, 1))
    path = out / "figures" / f"robustness_{task}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(path: Path, out: Path) -> str:
    """Summaries, figures and tables from the results file; returns the tables."""
    summary = summarise(load_runs(path))
    text = tables(summary) if summary else "(no runs)\n"
    for task, rows in summary.items():
        with open(out / "results" / f"robustness_{task}.json", "w") as handle:
            json.dump({"clients": CLIENTS, "cells": rows}, handle, indent=1)
        print(f"figure: {figure(task, rows, out)}")
    doc = out / "robustness.md"
    if doc.exists():
        body = doc.read_text()
        begin, end = MARKERS
        if begin in body and end in body:
            head, rest = body.split(begin, 1)
            doc.write_text(head + begin + "\n\n" + text + "\n" + end + rest.split(end, 1)[1])
            print(f"tables written to {doc}")
    return text


def _list(text: str, cast=str) -> list:
    return [cast(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help="digits, fmnist; also digits_iid, fmnist_iid (data.partition = iid)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    parser.add_argument("--attacks", default=",".join(ATTACKS),
                        help="attack kinds; also sign_flip_x1 (a sign flip with attack.scale = 1)")
    parser.add_argument("--aggregators", default=",".join(AGGREGATORS),
                        help="ids; bgmd_median = bgmd with strategy.bgmd_memory='median'")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--plot-only", action="store_true",
                        help="only redraw the figures and tables from the results file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    path = out / "results" / "robustness_runs.jsonl"
    if not args.plot_only:
        tasks, attacks, aggs = _list(args.tasks), _list(args.attacks), _list(args.aggregators)
        fractions = _list(args.fractions, float)
        problems = ([f"task {t!r}" for t in tasks if t not in (*TASKS, *EXTRA_TASKS)]
                    + [f"attack {a!r}" for a in attacks if a not in (*ATTACKS, *EXTRA_ATTACKS)]
                    + [f"aggregator {a!r}" for a in aggs if a not in AGGREGATORS]
                    + [f"fraction {f}" for f in fractions if not 0.0 <= f < 0.5])
        if problems:
            parser.error("unknown or out of range: " + ", ".join(problems))
        jobs = plan(tasks, _list(args.seeds, int), fractions, attacks, aggs, args.rounds)
        start = time.perf_counter()
        ran = sweep(jobs, path, args.jobs)
        print(f"{ran} runs in {time.perf_counter() - start:.0f} s")
    (out / "results").mkdir(parents=True, exist_ok=True)
    print(report(path, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
