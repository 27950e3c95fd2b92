"""Local GD in the setting of Deng, Kamani, Mahdavi's theory (AISTATS 2022, v1; issue 15).

The theorem's model and data, as far as a run can have them:

- the two-layer network of Du et al. (2019), ``model.parametrization='ntk'``::

      f(x) = m^-1/2 sum_r a_r relu(w_r^T x),  w_r ~ N(0, I_16),  a_r in {-1, +1} fixed
                                                              (model.freeze_output)

  only W is trained, no biases; its tangent kernel H(W) has a width-independent limit,
  so one step size eta serves every width m in {64, 256, 1024, 4096};
- the ``teacher`` task with n = 50 training points (``data.max_train``) on the unit
  sphere in R^16: 50 points against 16 m >= 1024 trained weights, and the kernel's
  smallest eigenvalue lambda_0 is far from 0 (for 410 points it was ~1e-5 of the largest);
- squared loss F = 1/(2n) sum_i (f(x_i) - y_i)^2 and its client parts F_k over S_k;
- K in {4, 8} clients, non-IID (Dirichlet(0.5) over the target deciles, >= 3 points
  each), full-batch local GD with tau in {1, 5, 20} steps, FedAvg weighted by examples,
  so that tau = 1 *is* centralised GD on F (a check the sweep makes);
- eta = 4: on the infinite-width kernel of these points eta * lambda_max(H_k) / n_k <= 0.9
  on every client (the local step is stable) and eta * lambda_max(H) / n ~ 0.16.

Local GD, round r (W_bar: the global model)::

    W_k^0 = W_bar;  W_k^{t+1} = W_k^t - eta grad F_k(W_k^t), t < tau;  W_bar <- sum_k n_k/n W_k^tau

Every run does tau * rounds = ``--steps`` local steps, so runs are compared at equal
gradient steps with centralised GD (K = 1, the same eta and steps). Recorded: the global
training loss after every round; the rate of linear convergence fitted to log F against
rounds (``fit_rate``) over the rounds before F falls below 1e-6 of its start; the
tangent kernel's eigenvalues at init; and on ~25 rounds the lazy-regime diagnostics
(``tasks.diagnostics.Tracker``) and the drift decomposition of every client's final local
model against W_bar (``tasks.drift_decomposition``)::

    python -m experiments.local_sgd_relu --setting theory           # ~10-15 min, 1 worker
    python -m experiments.local_sgd_relu --setting theory --quick   # smoke

The rounds are ``engine.run``'s; its ``on_client`` hook hands over W_bar and every W_k
for the drift decomposition.
"""

from __future__ import annotations

import math
import time

import numpy as np

ETA = 4.0
TRAIN_POINTS = 50
FLOOR = 1e-6  # the rate is fitted over the rounds before F < FLOOR * F_0
MEASURES = 25  # rounds with diagnostics and the drift decomposition, per run


def theory_overrides(width: int, tau: int, seed: int = 0, train_points: int = TRAIN_POINTS,
                     eta: float = ETA) -> dict:
    """The config of one run (everything else is conf/base.yaml + conf/task/teacher.yaml)."""
    return {"task.name": "teacher", "data.max_train": train_points,
            "data.partition": "dirichlet", "data.alpha": 0.5, "data.min_partition_size": 3,
            "model.depth": 1, "model.width": width, "model.parametrization": "ntk",
            "model.freeze_output": True, "train.lr": eta, "train.local_steps": tau,
            "train.batch_size": 4096, "strategy.weighting": "examples", "run.seed": seed,
            "train.drift_every": 1}


def fit_rate(losses, floor: float = FLOOR, skip: float = 0.0) -> dict:
    """Least-squares line through log F_r against r = 0, 1, ... over the rounds before
    F_r first falls below ``floor * F_0`` (or stops being finite and positive), leaving
    out the first ``skip`` fraction of them (a fast transient): ``rate`` = minus its slope
    (F_r ~ exp(intercept - rate r)), ``r2`` = R^2 of the line on log F, ``rounds`` = the
    last round it spans, ``intercept`` = the line's log F at r = 0."""
    losses = np.asarray(losses, float)
    if losses.ndim != 1 or len(losses) < 3:
        raise ValueError("fit_rate needs at least 3 losses (rounds 0, 1, 2).")
    ok = np.isfinite(losses) & (losses > 0) & (losses >= floor * losses[0])
    end = int(np.argmin(ok)) if not ok.all() else len(losses)
    end = max(end, 3) if ok[:3].all() else end
    if end < 3:
        return {"rate": float("nan"), "r2": float("nan"), "rounds": end, "intercept": float("nan")}
    first = min(int(skip * end), end - 3)
    r, y = np.arange(first, end, dtype=float), np.log(losses[first:end])
    slope, intercept = np.polyfit(r, y, 1)
    residual = y - (slope * r + intercept)
    spread = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / spread if spread > 0 else 1.0
    return {"rate": float(-slope), "r2": r2, "rounds": end - 1, "intercept": float(intercept)}


def tangent_kernel(model, x):
    """H_ij = <grad_W f(x_i), grad_W f(x_j)> over the trained parameters (one output)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        grads = torch.autograd.grad(model(x[i : i + 1]).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]).double())
    J = torch.stack(rows)
    return J @ J.T


def kernel_eigenvalues(model, data, splits) -> dict:
    """At init: lambda_min and lambda_max of H / n on the training set, and the largest
    lambda_max(H_k) / n_k over the clients (what bounds a stable local step)."""
    import torch

    H = tangent_kernel(model, data.train.x)
    ev = torch.linalg.eigvalsh(H)
    n = len(data.train)
    local = max(float(torch.linalg.eigvalsh(tangent_kernel(model, s.x))[-1]) / len(s) for s in splits)
    return {"lambda_min": float(ev[0]) / n, "lambda_max": float(ev[-1]) / n, "lambda_max_local": local}


def measured_rounds(rounds: int, count: int = MEASURES) -> set[int]:
    """About ``count`` rounds spread over 1..rounds, with the first and the last."""
    every = max(1, rounds // count)
    return {1, rounds} | set(range(every, rounds + 1, every))


def run_theory(job: tuple) -> dict:
    """One run: ``job = (clients, width, tau, rounds, seed[, train_points[, eta]])``;
    clients = 1 is centralised GD on the whole training set. ``engine.run`` does the
    rounds (``run.diagnostics``: F(W_bar) and ``Tracker``'s measures after each); its
    ``on_client`` hook hands this every client's W_k and the round's W_bar for the drift
    decomposition."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import engine
    import tasks
    from conf import load_config
    from engine import client_weights
    from results import metrics as M
    from tasks.diagnostics import Tracker
    from tasks.drift_decomposition import drift_decomposition

    clients, width, tau, rounds, seed, *rest = job
    overrides = theory_overrides(width, tau, seed, *rest)
    cfg = load_config({**overrides, "run.diagnostics": True,  # the engine's Tracker, on every point
                       "run.probe_examples": overrides["data.max_train"], "train.device": "cpu"})
    data, loss_fn, splits, model = tasks.federation(cfg, clients)  # as the engine builds them
    if max(len(s) for s in splits) > cfg.train.batch_size:
        raise ValueError("train.batch_size must cover every partition (full-batch local GD).")
    weights = client_weights(cfg, splits, 0)
    tracked = list(Tracker(model, data.train.x).measure(model))  # the keys it adds to a record
    kernel = kernel_eigenvalues(model, data, splits)
    losses = [tasks.evaluate(model, data.train, loss_fn, data.kind, cfg.eval.batch_size)["loss"]]
    diagnostics, parts, finite = [], [], True
    measure = measured_rounds(rounds)
    average = model  # from here on W_bar, from the engine's in each measured round

    def on_client(r, i, trained, start):
        nonlocal finite
        finite &= all(bool(torch.isfinite(p).all()) for p in trained.parameters())
        if r in measure and clients > 1:
            with torch.no_grad():
                for name, p in average.named_parameters():
                    if name in start:
                        p.copy_(start[name])
            parts.append(drift_decomposition(trained, average, splits[i], loss_fn))

    def on_round(record) -> bool:
        if record[M.AGGREGATE_REJECTED] or not finite:  # a model that is not finite
            losses.append(float("nan"))
            return True
        losses.append(record[M.GLOBAL_TRAIN_LOSS])
        if record[M.ROUND] in measure:
            diagnostics.append({"round": record[M.ROUND], **{key: record[key] for key in tracked},
                                "drift_steps_max": record.get(M.GRADIENT_DRIFT_MAX, 0.0)})
            if parts:
                w = weights / weights.sum()
                diagnostics[-1].update({f"{key}_max": max(p[key] for p in parts)
                                        for key in ("drift", "drift_flip")})
                diagnostics[-1].update({f"{key}_mean": float(np.dot(w, [p[key] for p in parts]))
                                        for key in ("drift", "drift_flip", "drift_kernel",
                                                    "flip_share", "pattern_flips")})
                parts.clear()
        return not math.isfinite(losses[-1])

    start_time = time.perf_counter()
    engine.run(cfg, clients, rounds=rounds, on_round=on_round, on_client=on_client)
    return {"clients": clients, "width": width, "tau": tau, "rounds": rounds, "seed": seed,
            "lr": cfg.train.lr, "train_points": len(data.train),
            "partition_sizes": [len(s) for s in splits], "kernel": kernel,
            "loss": losses, "diagnostics": diagnostics,
            "seconds": time.perf_counter() - start_time}


def theory_summary(run: dict) -> dict:
    """What the tables and figures show of one run: the loss ratios, the fitted rate per
    round and per gradient step with its R^2, and the diagnostics averaged over the
    measured rounds (the drift decomposition) or at the last one (weight change, flips)."""
    loss = run["loss"]
    fit, late, settled = fit_rate(loss), fit_rate(loss, skip=0.5), fit_rate(loss, skip=0.1)
    out = {"loss_ratio": loss[-1] / loss[0], "peak_ratio": max(loss) / loss[0],
           "rate_round": fit["rate"], "rate_step": fit["rate"] / run["tau"], "r2": fit["r2"],
           "fit_rounds": fit["rounds"],
           "rate_step_late": late["rate"] / run["tau"],  # the second half of the fitted rounds
           "r2_settled": settled["r2"],  # R^2 without the first 10 % of the fitted rounds
           "rounds_to_1e-2": next((r for r, v in enumerate(loss) if v <= 1e-2 * loss[0]), float("nan")),
           "eta_lambda_max_local": run["lr"] * run["kernel"]["lambda_max_local"],
           "predicted_rate_step": -2 * math.log(1 - run["lr"] * run["kernel"]["lambda_min"])}
    diags = run["diagnostics"]
    if diags:
        last = diags[-1]
        out.update({"weight_change_l0": last["weight_change_l0"],
                    "activation_flips": last["activation_flips"]})
        for key in ("drift_mean", "drift_flip_mean", "drift_kernel_mean", "flip_share_mean",
                    "pattern_flips_mean", "drift_max"):
            if key in diags[0]:
                out[key] = float(np.mean([d[key] for d in diags]))
    return out


def loss_at_step(run: dict, step: int) -> float:
    """F(W_bar) after ``step`` gradient steps (a multiple of the run's tau)."""
    if step % run["tau"]:
        raise ValueError(f"step {step} is not a multiple of tau = {run['tau']}.")
    index = step // run["tau"]
    return run["loss"][index] if index < len(run["loss"]) else float("nan")


def aggregate(values) -> tuple[float, float]:
    """Mean and sample std (0 for one value) over seeds."""
    values = np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def pm(values, fmt: str = ".3g") -> str:
    """mean ± std over the seeds; NaN (e.g. a target not reached) leaves that seed out."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-"
    mean, std = aggregate(finite)
    missing = f" ({len(finite)}/{len(values)} seeds)" if len(finite) < len(values) else ""
    return f"{mean:{fmt}} ± {std:{fmt}}{missing}"


def group(runs: list[dict]) -> dict[tuple, list[dict]]:
    """Runs by (K, m, tau), over seeds."""
    out: dict[tuple, list[dict]] = {}
    for run in runs:
        out.setdefault((run["clients"], run["width"], run["tau"]), []).append(run)
    return out


def tables(runs: list[dict], compare_step: int) -> str:
    """Markdown tables, mean ± std over seeds: the rate fits, GD against Local GD at equal
    steps, the drift decomposition."""
    groups = group(runs)
    gd = {m: rs for (k, m, _), rs in groups.items() if k == 1}
    local = sorted((key for key in groups if key[0] > 1), key=lambda k: (k[0], k[2], k[1]))
    lines = ["| K | tau | m | F_R / F_0 | peak F / F_0 | rate per round | rate per step | R^2 | "
             "rounds fitted | late rate per step | R^2 after 10 % | 2 eta lambda_0 / n | "
             "eta lambda_max (local) | rounds to 1e-2 F_0 |", "|" + " --- |" * 14]
    columns = (("loss_ratio", ".3g"), ("peak_ratio", ".3g"), ("rate_round", ".3g"),
               ("rate_step", ".3g"), ("r2", ".4f"), ("fit_rounds", ".0f"), ("rate_step_late", ".3g"),
               ("r2_settled", ".4f"), ("predicted_rate_step", ".3g"), ("eta_lambda_max_local", ".2f"),
               ("rounds_to_1e-2", ".0f"))
    for key in sorted(groups, key=lambda k: (k[0], k[2], k[1])):
        s = [theory_summary(r) for r in groups[key]]
        lines.append(f"| {key[0] if key[0] > 1 else '1 (GD)'} | {key[2]} | {key[1]} | "
                     + " | ".join(pm([x[name] for x in s], f) for name, f in columns) + " |")
    lines += ["", f"Equal gradient steps: F after {compare_step} steps (Local GD: round "
              f"{compare_step}/tau), over F_0; GD = K = 1 with the same eta.", "",
              "| K | tau | m | Local GD | centralised GD | Local / GD |", "|" + " --- |" * 6]
    for key in local:
        k, m, tau = key
        if m not in gd:
            continue
        by_seed = {r["seed"]: r for r in gd[m]}
        pairs = [(loss_at_step(r, compare_step) / r["loss"][0],
                  loss_at_step(by_seed[r["seed"]], compare_step) / by_seed[r["seed"]]["loss"][0])
                 for r in groups[key] if r["seed"] in by_seed]
        lines.append(f"| {k} | {tau} | {m} | {pm([a for a, _ in pairs])} | {pm([b for _, b in pairs])} | "
                     f"{pm([a / b for a, b in pairs])} |")
    lines += ["", "Drift of the final local models from W_bar, relative to ||g_k(W_bar)||, "
              "client-weighted, mean over the measured rounds; flip share = ||flip|| / "
              "(||flip|| + ||kernel||).", "",
              "| K | tau | m | drift | flip part | kernel part | flip share | gates flipped | "
              "weight change (W) | flips vs init |", "|" + " --- |" * 10]
    for key in local:
        s = [theory_summary(r) for r in groups[key]]
        if "drift_mean" not in s[0]:
            continue
        names = ("drift_mean", "drift_flip_mean", "drift_kernel_mean", "flip_share_mean",
                 "pattern_flips_mean", "weight_change_l0", "activation_flips")
        lines.append(f"| {key[0]} | {key[2]} | {key[1]} | "
                     + " | ".join(pm([x[name] for x in s]) for name in names) + " |")
    return "\n".join(lines)


def slopes_against_width(runs: list[dict]) -> dict:
    """Log-log slope against m of the seed means, per (K, tau)."""
    groups = group(runs)
    out = {}
    for k, tau in sorted({(k, t) for k, _, t in groups if k > 1}):
        widths = sorted(m for kk, m, t in groups if kk == k and t == tau)
        if len(widths) < 2:
            continue
        means = {name: [np.mean([theory_summary(r)[name] for r in groups[(k, m, tau)]]) for m in widths]
                 for name in ("weight_change_l0", "activation_flips", "drift_flip_mean",
                              "drift_kernel_mean", "drift_mean")}
        out[f"K={k} tau={tau}"] = {name: float(np.polyfit(np.log(widths), np.log(v), 1)[0])
                                   for name, v in means.items() if all(x > 0 for x in v)}
    return out


def figures(runs: list[dict], out, compare_step: int) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group(runs)
    ks = sorted({k for k, _, _ in groups if k > 1})
    widths = sorted({m for _, m, _ in groups})
    taus = sorted({t for k, _, t in groups if k > 1})
    color = {m: plt.cm.viridis(i / max(1, len(widths) - 1)) for i, m in enumerate(widths)}
    tcolor = {t: plt.cm.plasma(i / max(1, len(taus))) for i, t in enumerate(taus)}
    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(fig, name):
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    def band(ax, rs, x_scale, color, label, style="-", shade=True):
        """Mean of log10 F/F_0 over seeds, shaded +- one std (a band on the log axis)."""
        n = min(len(r["loss"]) for r in rs)
        logs = np.log10([np.asarray(r["loss"][:n]) / r["loss"][0] for r in rs])
        mean, std = logs.mean(0), logs.std(0, ddof=1) if len(rs) > 1 else np.zeros(n)
        x = np.arange(n) * x_scale
        ax.plot(x, 10**mean, style, color=color, label=label, lw=1.3, zorder=3 if shade else 5)
        if shade:
            ax.fill_between(x, 10 ** (mean - std), 10 ** (mean + std), color=color, alpha=0.2, lw=0)

    # 1. log F against rounds, one panel per (K, tau), one band per width, the fitted line
    fig, axes = plt.subplots(len(ks), len(taus), figsize=(4 * len(taus), 3.3 * len(ks)),
                             squeeze=False, sharey=True)
    for i, k in enumerate(ks):
        for j, tau in enumerate(taus):
            ax = axes[i, j]
            for m in widths:
                if (k, m, tau) in groups:
                    band(ax, groups[(k, m, tau)], 1, color[m], f"m = {m}")
            top = groups.get((k, widths[-1], tau))
            if top:
                fits = [fit_rate(r["loss"]) for r in top]
                rate, r2 = np.mean([f["rate"] for f in fits]), np.mean([f["r2"] for f in fits])
                start = np.mean([f["intercept"] - math.log(r["loss"][0]) for f, r in zip(fits, top)])
                end = int(np.mean([f["rounds"] for f in fits]))
                rr = np.arange(end + 1)
                ax.plot(rr, np.exp(start - rate * rr), "--k", lw=1,
                        label=f"fit m = {widths[-1]}: exp(-{rate:.3g} r), R² = {r2:.4f}")
            ax.axhline(FLOOR, color="grey", lw=0.6, ls=":")
            ax.set(yscale="log", xlabel="round r", title=f"K = {k}, tau = {tau}")
            if j == 0:
                ax.set_ylabel("training loss F(W_bar) / F_0")
            ax.legend(fontsize=7, loc="lower left")
    save(fig, "local_sgd_theory_loss.png")

    # 2. equal gradient steps: Local GD (each tau) against centralised GD, two widths
    shown = [m for m in (widths[0], widths[-1]) if any((1, m, 1) == key for key in groups)]
    if shown:
        fig, axes = plt.subplots(len(shown), len(ks), figsize=(5.2 * len(ks), 3.6 * len(shown)),
                                 squeeze=False, sharey=True)
        for i, m in enumerate(dict.fromkeys(shown)):
            for j, k in enumerate(ks):
                ax = axes[i, j]
                for tau in taus:
                    if (k, m, tau) in groups:
                        band(ax, groups[(k, m, tau)], tau, tcolor[tau], f"Local GD, tau = {tau}")
                band(ax, groups[(1, m, 1)], 1, "black", "centralised GD (seed mean)", "--", shade=False)
                ax.axvline(compare_step, color="grey", lw=0.6, ls=":")
                ax.set(yscale="log", xlabel="gradient steps (tau x rounds)",
                       title=f"K = {k}, m = {m}: equal gradient steps")
                if j == 0:
                    ax.set_ylabel("F(W_bar) / F_0")
                ax.legend(fontsize=7, loc="lower left")
        save(fig, "local_sgd_theory_gd.png")

    def errorbars(ax, name, taus_shown, with_gd=False, scale=lambda run: 1.0):
        for k, marker in zip(ks, ("o", "s"), strict=False):
            for tau in taus_shown:
                ms = [m for m in widths if (k, m, tau) in groups]
                stats = [aggregate([theory_summary(r)[name] * scale(r) for r in groups[(k, m, tau)]])
                         for m in ms]
                ax.errorbar(ms, [s[0] for s in stats], yerr=[s[1] for s in stats], marker=marker,
                            ms=4, capsize=2, color=tcolor[tau], ls="-" if k == ks[0] else "--",
                            label=f"K = {k}, tau = {tau}")
        if with_gd:
            ms = [m for m in widths if (1, m, 1) in groups]
            stats = [aggregate([theory_summary(r)[name] for r in groups[(1, m, 1)]]) for m in ms]
            ax.errorbar(ms, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="^", ms=5,
                        capsize=2, color="black", ls=":", label="centralised GD")
        ax.set_xscale("log")

    # 3. fitted rate per gradient step (late: the second half of the fitted rounds) and R^2
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    errorbars(axes[0], "rate_step_late", taus, with_gd=True)
    ms = np.array(widths, float)
    predicted = [np.mean([theory_summary(r)["predicted_rate_step"] for r in groups[(1, m, 1)]])
                 for m in widths if (1, m, 1) in groups]
    if len(predicted) == len(widths):
        axes[0].plot(ms, predicted, ":", color="grey", label="2 eta lambda_min(H_0)/n (kernel at init)")
    axes[0].set(xlabel="width m", ylabel="fitted rate per gradient step (late half)",
                title="linear rate: -slope of ln F per step, second half of the fit")
    axes[0].legend(fontsize=7)
    errorbars(axes[1], "r2_settled", taus, with_gd=True)
    axes[1].set(xlabel="width m", ylabel="R² of the line through ln F vs round",
                title="how linear ln F is (after the first 10 %, until F < 1e-6 F_0)")
    save(fig, "local_sgd_theory_rate.png")

    # 4. drift decomposition against m
    moving = [t for t in taus if any((k, m, t) in groups for k in ks for m in widths)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    for ax, name, label in zip(axes, ("drift_flip_mean", "drift_kernel_mean", "flip_share_mean"),
                               ("flip part / ||g_k(W_bar)||", "kernel part / ||g_k(W_bar)||",
                                "||flip|| / (||flip|| + ||kernel||)"), strict=True):
        errorbars(ax, name, moving)
        ax.set(xlabel="width m", ylabel=label, yscale="log")
    ms0 = np.array(widths, float)
    for ax, name in zip(axes[:1], ("drift_flip_mean",), strict=True):
        group0 = [aggregate([theory_summary(r)[name] for r in groups[(ks[-1], m, taus[-1])]])[0]
                  for m in widths if (ks[-1], m, taus[-1]) in groups]
        if len(group0) == len(widths):
            ax.plot(ms0, group0[0] * (ms0 / ms0[0]) ** -0.5, ":k", label="~ m^-1/2")
    axes[0].set_title("drift from ReLU flips")
    axes[1].set_title("drift with W_bar's gates held fixed")
    axes[2].set_title("share of the drift from flips")
    axes[0].legend(fontsize=7)
    save(fig, "local_sgd_theory_drift.png")

    # 5. lazy regime: weight change and flips against m
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    for ax, name, label in zip(axes, ("weight_change_l0", "activation_flips"),
                               ("||W_R - W_0||_F / ||W_0||_F", "fraction of ReLU gates flipped vs init"),
                               strict=True):
        errorbars(ax, name, taus, with_gd=True)
        group0 = [aggregate([theory_summary(r)[name] for r in groups[(1, m, 1)]])[0]
                  for m in widths if (1, m, 1) in groups]
        if len(group0) == len(widths):
            ax.plot(ms0, group0[0] * (ms0 / ms0[0]) ** -0.5, ":k", label="~ m^-1/2")
        title = "ReLU gates flipped since init" if name == "activation_flips" else "relative change of W"
        ax.set(xlabel="width m", ylabel=label, yscale="log", title=f"{title}, after the last round")
        ax.legend(fontsize=7)
    save(fig, "local_sgd_theory_lazy.png")
    return paths


def main(args, argv: list[str] | None = None) -> int:
    """``--setting theory`` of ``experiments.local_sgd_relu`` (``args``: its argument
    parser's, from the command-line arguments ``argv``)."""
    import json
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    from experiments.provenance import provenance

    if args.plot_only:  # redraw from the results file
        with open(Path(args.out) / "results" / "local_sgd_relu_theory.json") as handle:
            saved = json.load(handle)
        print(tables(saved["runs"], saved["compare_step"]))
        print("\nlog-log slopes against m:", json.dumps(slopes_against_width(saved["runs"]), indent=1))
        for path in figures(saved["runs"], Path(args.out), saved["compare_step"]):
            print(f"figure: {path}")
        return 0
    steps = args.steps
    widths = [int(m) for m in args.widths.split(",")]
    taus = [int(t) for t in args.taus.split(",")]
    ks = [int(k) for k in args.clients.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if any(steps % t for t in taus):
        raise ValueError(f"--steps {steps} must be a multiple of every tau {taus}.")
    grid = [(k, m, tau, steps // tau, seed) for k in ks for m in widths for tau in taus for seed in seeds]
    grid += [(1, m, 1, steps, seed) for m in widths for seed in seeds]  # centralised GD
    grid.sort(key=lambda job: -job[0] * job[1] * job[3] * (1 + job[2] / 4))  # longest first
    made = provenance("experiments.local_sgd_relu", argv)  # before the runs: others commit meanwhile
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(run_theory, grid))
    runs.sort(key=lambda r: (r["clients"], r["tau"], r["width"], r["seed"]))
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    lcm = math.lcm(*taus)
    compare = args.compare_step or max(lcm, steps // 3 // lcm * lcm)
    text = tables(runs, compare)
    for run in runs:  # 6 significant digits are plenty for a figure or a fit
        run["loss"] = [float(f"{v:.6g}") for v in run["loss"]]
    with open(out / "results" / "local_sgd_relu_theory.json", "w") as handle:
        json.dump({**made, "eta": runs[0]["lr"], "steps": steps,
                   "seconds": time.perf_counter() - started, "compare_step": compare,
                   "slopes": slopes_against_width(runs),
                   "summaries": [{k: r[k] for k in ("clients", "width", "tau", "seed", "kernel")}
                                 | theory_summary(r) for r in runs],
                   "runs": runs}, handle)
    print(text)
    print("\nlog-log slopes against m:", json.dumps(slopes_against_width(runs), indent=1))
    for path in figures(runs, out, compare):
        print(f"figure: {path}")
    print(f"{len(grid)} runs in {time.perf_counter() - started:.0f} s")
    return 0
