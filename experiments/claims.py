"""Each paper's headline claim as a reduced check, and the broken algorithms it must reject.

::

    python -m experiments.claims            # every claim, 3 seeds, a table (about 3 min on 2 cores)
    python -m experiments.claims --check    # exit 1 unless every claim holds and every mutant is rejected
    python -m experiments.claims --only pga_beats_gossip_on_a_ring --seeds 5

A claim compares the **averaged model's** loss (the global model's, or x_bar's for
Gossip-PGA; never a client's own mini-batch loss) of the algorithm under test with a
baseline, over several seeds: it holds when the mean over seeds of the statistic (the
ratio of the two losses, or log10 of the loss over its start) is at most the threshold.
The margin is how far inside the threshold the mean lies (in the statistic's units and
in standard deviations over seeds). Every claim then runs the algorithm under test again
with each of its mutants (``experiments.mutants``: no averaging, a stale model, no
clipping, identity mixing, no global average) against the same baseline runs: the check
is only worth something if each mutant fails it.

Everything runs on the one-process engine (``engine.run``), i.e. the same algorithm code
as the Flower strategies. Writes ``<out>/results/claims.json`` (every run's numbers, the
commit and the command) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from experiments.mutants import MUTANTS
from experiments.provenance import provenance

# ----------------------------------------------------------------------------- the arms
# An arm is one configuration on the engine: (overrides, clients, rounds, what to measure).
# Settings and why:
# - Deng et al.: their theory's setting (experiments.local_sgd_theory): the two-layer net
#   m^-1/2 sum_r a_r relu(w_r x) with the output signs a_r fixed (model.parametrization=ntk,
#   model.freeze_output), width 1024, squared loss, the teacher task's 51 training points
#   on the unit sphere (n small: the net is over-parameterised), K = 4 non-IID clients
#   (Dirichlet 0.5 over target deciles), full-batch local GD, tau = 20, eta = 4 (an O(1)
#   step is stable in this parametrization), 80 rounds.
# - CELGC: a step so large that unclipped SGD does not train (digits MLP, batch 4,
#   eta = 1, gamma = 0.5: c = gamma/eta = 0.5), 100 iterations per client, IID clients
#   (the paper's homogeneous setting); the loss is the global model's on the test set.
# - Gossip-PGA: 16 nodes on a ring (beta = 0.95), digits Dirichlet(0.1) (strongly
#   non-IID), one SGD step per iteration, H = 4, 200 iterations; x_bar's training loss.
DENG = {"task.name": "teacher", "data.num_samples": 64, "data.partition": "dirichlet",
        "data.alpha": 0.5, "data.min_partition_size": 2, "model.depth": 1, "model.width": 1024,
        "model.parametrization": "ntk", "model.freeze_output": True, "train.lr": 4.0,
        "train.local_steps": 20, "train.batch_size": 4096, "run.diagnostics": True}
CELGC = {"task.name": "digits", "data.partition": "iid", "train.batch_size": 4, "train.lr": 1.0,
         "strategy.clip_gamma": 0.5, "train.momentum": 0.0, "strategy.weighting": "uniform"}
GOSSIP = {"strategy.name": "gossip_pga", "task.name": "digits", "data.partition": "dirichlet",
          "data.alpha": 0.1, "train.lr": 0.1, "train.batch_size": 32, "train.momentum": 0.0,
          "strategy.evaluate_nodes": False, "strategy.topology": "ring", "strategy.period": 4}
CELGC_ITERATIONS, GOSSIP_ITERATIONS = 100, 200


@dataclass(frozen=True)
class Arm:
    overrides: dict
    clients: int
    rounds: int
    measure: str  # a record's metric: global_train_loss | test_loss | xbar_train_loss
    initial: bool = False  # also measure the model at round 0 (for log10(F_R / F_0))
    tail: int = 1  # average the measure over the last `tail` evaluations, every_ rounds apart
    every: int = 0  # evaluate every this many rounds (0: at the end only)


# The CELGC arms sit at SGD's noise floor by the end: their loss is the mean of the last
# five evaluations, about 8 iterations apart (iterations 72-100), not one noisy point.
FLOOR = {"tail": 5}

ARMS = {
    "local_gd": Arm({**DENG, "strategy.name": "fedavg"}, 4, 80, "global_train_loss", initial=True),
    "celgc": Arm({**CELGC, "strategy.name": "clipped_fedavg", "train.local_steps": 4}, 8,
                 CELGC_ITERATIONS // 4, "test_loss", every=2, **FLOOR),
    "celgc_one_client": Arm({**CELGC, "strategy.name": "clipped_fedavg", "train.local_steps": 4}, 1,
                            CELGC_ITERATIONS // 4, "test_loss", every=2, **FLOOR),
    "naive_clipping": Arm({**CELGC, "strategy.name": "naive_clipping"}, 8, CELGC_ITERATIONS,
                          "test_loss", every=8, **FLOOR),
    "unclipped_local_sgd": Arm({**CELGC, "strategy.name": "fedavg", "train.local_steps": 4}, 8,
                               CELGC_ITERATIONS // 4, "test_loss", every=2, **FLOOR),
    "gossip_pga": Arm(GOSSIP, 16, GOSSIP_ITERATIONS, "xbar_train_loss"),
    "gossip_sgd": Arm({**GOSSIP, "strategy.averaging": "never"}, 16, GOSSIP_ITERATIONS,
                      "xbar_train_loss"),
    "local_sgd": Arm({**GOSSIP, "strategy.topology": "identity"}, 16, GOSSIP_ITERATIONS,
                     "xbar_train_loss"),
}


# ----------------------------------------------------------------------------- the claims
@dataclass(frozen=True)
class Claim:
    name: str
    paper: str
    statement: str
    subject: str  # the arm under test; mutants break it
    baseline: str | None  # the arm it is compared with; None: its own loss at round 0
    threshold: float  # holds iff mean over seeds of the statistic <= threshold
    mutants: tuple[str, ...]
    statistic: str = "ratio"  # ratio: subject / baseline loss; log10: log10(F_R / F_0)


CLAIMS = [
    Claim("local_gd_to_zero_loss", "Deng, Kamani, Mahdavi 2022",
          "Local GD on non-IID clients drives a wide ReLU net's training loss (of the averaged "
          "model) to 1e-4 of its start in 80 rounds", "local_gd", None, -4.0,
          ("no_averaging", "stale_model"), statistic="log10"),
    Claim("celgc_matches_naive_clipping", "Liu, Zhuang, Lei, Liao 2022",
          "CELGC (I = 4) ends within 25 % of naive parallel clipping's loss at equal "
          "iterations, with 4x fewer rounds", "celgc", "naive_clipping", 1.25,
          ("no_averaging", "stale_model", "no_clipping")),
    Claim("celgc_needs_clipping", "Liu, Zhuang, Lei, Liao 2022",
          "at a step where unclipped Local SGD does not train, CELGC's loss is at most half of it",
          "celgc", "unclipped_local_sgd", 0.5, ("no_clipping",)),
    Claim("celgc_speedup_in_clients", "Liu, Zhuang, Lei, Liao 2022",
          "8 clients (same per-client batch and iterations) reach at most half the loss of 1",
          "celgc", "celgc_one_client", 0.5, ("no_averaging",)),
    Claim("pga_beats_gossip_on_a_ring", "Chen, Yuan et al. 2021",
          "on a ring, Gossip-PGA (H = 4) ends at most 0.9x Gossip SGD's loss",
          "gossip_pga", "gossip_sgd", 0.9, ("no_global_average", "identity_mixing")),
    Claim("pga_beats_local_sgd", "Chen, Yuan et al. 2021",
          "Gossip-PGA ends at most 0.9x Local SGD's loss with the same H", "gossip_pga",
          "local_sgd", 0.9, ("identity_mixing",)),
]


# ----------------------------------------------------------------------------- running
def run_arm(job: tuple[str, str | None, int]) -> dict:
    """One run: arm ``name`` (broken by ``mutant`` if given) with seed ``seed``."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=UserWarning)  # flwr-datasets' Dirichlet retries
    torch.set_num_threads(1)
    import algorithms
    import engine
    import tasks
    from conf import load_config
    from experiments import mutants

    name, mutant, seed = job
    arm = ARMS[name]
    cfg = load_config({**arm.overrides, "run.seed": seed})
    algorithm, aggregator = (None, None)
    if mutant is not None:
        algorithm, aggregator = mutants.apply(mutant, algorithms.get(cfg.strategy.name))
    start = time.perf_counter()
    out = {"arm": name, "mutant": mutant, "seed": seed}
    if arm.initial:
        data, loss_fn, _, model = tasks.federation(cfg, arm.clients)
        out["initial"] = tasks.evaluate(model, data.train, loss_fn, data.kind)["loss"]
    records = engine.run(cfg, arm.clients, rounds=arm.rounds, evaluate_every=arm.every or arm.rounds,
                         algorithm=algorithm, aggregator=aggregator).records
    measured = [r[arm.measure] for r in records if arm.measure in r][-arm.tail:]
    final = statistics.fmean(measured) if len(measured) == arm.tail else math.nan
    out.update(final=final if math.isfinite(final) else math.inf,
               seconds=time.perf_counter() - start)
    return out


def jobs_for(claims: list[Claim], seeds: int) -> list[tuple[str, str | None, int]]:
    """Every distinct run the claims need (baselines shared between claims)."""
    wanted = []
    for claim in claims:
        arms = [(claim.subject, None)] + [(claim.subject, m) for m in claim.mutants]
        if claim.baseline is not None:
            arms.append((claim.baseline, None))
        wanted += [(name, mutant, seed) for name, mutant in arms for seed in range(seeds)]
    return list(dict.fromkeys(wanted))


@dataclass
class Verdict:
    claim: Claim
    values: list[float]  # the statistic per seed
    holds: bool
    margin: float  # threshold - mean (positive: inside)
    mutants: dict[str, list[float]] = field(default_factory=dict)  # mutant -> statistic per seed

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def rejected(self, mutant: str) -> bool:
        return not statistics.fmean(self.mutants[mutant]) <= self.claim.threshold

    @property
    def all_rejected(self) -> bool:
        return all(self.rejected(m) for m in self.mutants)


def statistic(claim: Claim, subject: dict, baseline: dict | None) -> float:
    """The claim's number for one seed (inf where the subject diverged)."""
    if claim.statistic == "log10":
        ratio = subject["final"] / subject["initial"]
        return math.log10(ratio) if ratio > 0 else -math.inf
    return subject["final"] / baseline["final"]


def judge(claim: Claim, runs: dict, seeds: int) -> Verdict:
    """``runs``: (arm, mutant, seed) -> run_arm's result."""
    def values(mutant):
        return [statistic(claim, runs[(claim.subject, mutant, s)],
                          runs[(claim.baseline, None, s)] if claim.baseline else None)
                for s in range(seeds)]

    own = values(None)
    mean = statistics.fmean(own)
    return Verdict(claim, own, mean <= claim.threshold, claim.threshold - mean,
                   {m: values(m) for m in claim.mutants})


def evaluate(claims: list[Claim], seeds: int, workers: int) -> tuple[list[Verdict], list[dict]]:
    jobs = jobs_for(claims, seeds)
    jobs.sort(key=lambda job: -ARMS[job[0]].clients * ARMS[job[0]].rounds)  # long ones first
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(run_arm, jobs))
    else:
        results = [run_arm(job) for job in jobs]
    runs = {(r["arm"], r["mutant"], r["seed"]): r for r in results}
    return [judge(claim, runs, seeds) for claim in claims], results


# ----------------------------------------------------------------------------- reporting
def _fmt(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def table(verdicts: list[Verdict]) -> str:
    lines = ["| claim | measured (mean ± std over seeds) | threshold | margin | holds? | "
             "mutants rejected? |", "|" + " --- |" * 6]
    for v in verdicts:
        what = "log10(F_R / F_0)" if v.claim.statistic == "log10" else \
            f"{v.claim.subject} / {v.claim.baseline}"
        spread = f"{v.margin / v.std:.1f} std" if v.std > 0 and math.isfinite(v.margin) else "-"
        mutants = ", ".join(
            f"{m} ({_fmt(statistics.fmean(vals))}): {'yes' if v.rejected(m) else 'NO'}"
            for m, vals in v.mutants.items())
        lines.append(f"| {v.claim.name}: {v.claim.statement} | {what} = {_fmt(v.mean)} ± "
                     f"{_fmt(v.std)} | <= {v.claim.threshold:g} | {_fmt(v.margin)} ({spread}) | "
                     f"{'yes' if v.holds else 'NO'} | {mutants} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless every claim holds and every mutant is rejected")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated claim names")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="", help="write <out>/results/claims.json")
    args = parser.parse_args(argv)
    claims = CLAIMS
    if args.only:
        known = {c.name: c for c in CLAIMS}
        unknown = sorted(set(args.only.split(",")) - set(known))
        if unknown:
            parser.error(f"unknown claim(s) {unknown}; choose from {sorted(known)}")
        claims = [known[name] for name in args.only.split(",")]
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (a spread needs two)")
    made = provenance("experiments.claims", argv)  # before the runs: others may commit meanwhile
    started = time.perf_counter()
    verdicts, results = evaluate(claims, args.seeds, args.workers)
    print(table(verdicts))
    for name in sorted({m for c in claims for m in c.mutants}):
        print(f"- {name}: {MUTANTS[name].breaks}")
    print(f"{len(results)} runs in {time.perf_counter() - started:.0f} s")
    if args.out:
        path = Path(args.out) / "results" / "claims.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            **made, "seeds": args.seeds,
            "claims": [{"name": v.claim.name, "paper": v.claim.paper, "statement": v.claim.statement,
                        "statistic": v.claim.statistic, "threshold": v.claim.threshold,
                        "values": v.values, "holds": v.holds, "margin": v.margin,
                        "mutants": {m: {"values": vals, "rejected": v.rejected(m)}
                                    for m, vals in v.mutants.items()}} for v in verdicts],
            "runs": results}, indent=1, default=str))
        print(f"results: {path}")
    ok = all(v.holds and v.all_rejected for v in verdicts)
    if args.check and not ok:
        print("claims check FAILED: " + "; ".join(
            f"{v.claim.name} {'does not hold' if not v.holds else 'accepts a mutant'}"
            for v in verdicts if not (v.holds and v.all_rejected)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
