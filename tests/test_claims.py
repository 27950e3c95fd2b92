"""The claim checks (experiments.claims) and the mutants they must reject
(experiments.mutants): each mutant breaks what it says and nothing else, the verdict logic
is right, and, in the slow test, every paper's claim holds while every mutant fails it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import algorithms
import tasks
from algorithms.settings import round_settings
from client.train import round_seed
from conf import load_config
from engine import run
from experiments import claims as C
from experiments import mutants

SMALL = {"task.name": "teacher", "data.num_samples": 80, "data.partition": "iid",
         "model.width": 16, "train.lr": 0.05, "train.batch_size": 4}


# ----------------------------------------------------------------------------- mutants
def test_no_averaging_hands_out_the_first_clients_trained_model():
    cfg = load_config({**SMALL, "train.local_steps": 2})
    factory, aggregator = mutants.apply("no_averaging", algorithms.get("fedavg"))
    kept = run(cfg, 3, rounds=1, algorithm=factory, aggregator=aggregator)
    averaged = run(cfg, 3, rounds=1)
    _, loss_fn, splits, model = tasks.federation(cfg, 3)  # client 0 alone, as the engine runs it
    algorithms.get("fedavg").client_update(model, splits[0], loss_fn, round_settings(cfg, 1),
                                           seed=round_seed(cfg.run.seed, 0, 1))
    for name, value in model.state_dict().items():
        assert np.allclose(kept.state[name].numpy(), value.numpy(), atol=1e-6)
    assert any(not np.allclose(kept.state[n].numpy(), averaged.state[n].numpy()) for n in kept.state)


def test_no_averaging_row_is_the_first_update():
    u = np.arange(12.0).reshape(3, 4)
    assert np.array_equal(mutants.first_reply(u, np.ones(3)).vector, u[0])


def test_stale_model_hands_out_the_previous_rounds_model():
    stale_cls, aggregator = mutants.apply("stale_model", algorithms.get("fedavg"))
    assert aggregator is None
    algorithm = stale_cls(load_config(SMALL), num_nodes=2)
    x0 = np.zeros(3)
    outputs = [algorithm.server_update(x, np.full(3, a), None, [])[0]
               for x, a in ((x0, 1.0), (x0, 2.0), (np.ones(3), 3.0))]
    # round 1 keeps x; round 2 gets round 1's x + A = 1; round 3 gets round 2's 0 + 2 = 2
    assert [o.tolist() for o in outputs] == [[0.0] * 3, [1.0] * 3, [2.0] * 3]


def test_no_clipping_removes_the_clip_and_only_the_clip():
    cfg = load_config({**SMALL, "strategy.name": "clipped_fedavg", "strategy.clip_gamma": 0.3})
    clipped = algorithms.get("clipped_fedavg")
    unclipped, _ = mutants.apply("no_clipping", clipped)
    real, broken = round_settings(cfg, 1), round_settings(cfg, 1, unclipped)
    assert real.clip_gamma == pytest.approx(0.3) and broken.clip_gamma is None
    assert real.with_(clip_gamma=None) == broken
    # and the engine trains with the broken settings: it equals plain FedAvg
    plain = run(load_config({**SMALL, "train.local_steps": 3}), 2, rounds=2)
    mutant = run(load_config({**SMALL, "strategy.name": "clipped_fedavg", "strategy.clip_gamma": 1e-4,
                              "train.local_steps": 3}), 2, rounds=2, algorithm=unclipped)
    for name in plain.state:
        assert np.array_equal(plain.state[name].numpy(), mutant.state[name].numpy())


@pytest.mark.parametrize("mutant, same_as", [
    ("identity_mixing", {"strategy.topology": "identity"}),
    ("no_global_average", {"strategy.averaging": "never"}),
])
def test_gossip_mutants_are_the_methods_they_reduce_to(mutant, same_as):
    gossip = {**SMALL, "strategy.name": "gossip_pga", "strategy.topology": "ring",
              "strategy.period": 3}
    factory, _ = mutants.apply(mutant, algorithms.get("gossip_pga"))
    broken = run(load_config(gossip), 6, 7, algorithm=factory)
    reference = run(load_config({**gossip, **same_as}), 6, 7)
    real = run(load_config(gossip), 6, 7)
    assert np.array_equal(broken.X, reference.X)
    assert not np.allclose(broken.X, real.X)


def test_a_mutant_that_does_not_apply_is_refused():
    with pytest.raises(ValueError, match="does not apply to 'fedavg'"):
        mutants.apply("no_clipping", algorithms.get("fedavg"))
    with pytest.raises(ValueError, match="Unknown mutant"):
        mutants.apply("no_such", algorithms.get("fedavg"))


# ----------------------------------------------------------------------------- verdicts
def _runs(subject, baseline, mutant_values):
    runs = {}
    for s, (a, b) in enumerate(zip(subject, baseline, strict=True)):
        runs[("x", None, s)] = {"final": a}
        runs[("y", None, s)] = {"final": b}
    for name, values in mutant_values.items():
        for s, v in enumerate(values):
            runs[("x", name, s)] = {"final": v}
    return runs


def test_a_claim_holds_on_the_mean_and_a_mutant_is_rejected_when_its_mean_fails():
    claim = C.Claim("c", "p", "x beats y", "x", "y", 0.9, ("m1", "m2"))
    runs = _runs([0.7, 0.8, 0.9], [1.0, 1.0, 1.0], {"m1": [1.0, 1.0, 1.0], "m2": [0.8, 0.9, 0.95]})
    verdict = C.judge(claim, runs, 3)
    assert verdict.values == pytest.approx([0.7, 0.8, 0.9])
    assert verdict.holds and verdict.margin == pytest.approx(0.1)
    assert verdict.rejected("m1") and not verdict.rejected("m2") and not verdict.all_rejected
    assert "m2 (0.883): NO" in C.table([verdict])


def test_a_diverged_subject_fails_and_log10_claims_use_the_start():
    claim = C.Claim("c", "p", "to zero", "x", None, -3.0, (), statistic="log10")
    runs = {("x", None, 0): {"final": 1e-4, "initial": 1.0}, ("x", None, 1): {"final": 1e-2, "initial": 1.0}}
    verdict = C.judge(claim, runs, 2)
    assert verdict.values == pytest.approx([-4.0, -2.0]) and verdict.holds
    diverged = C.Claim("d", "p", "beats", "x", "y", 0.9, ())
    assert not C.judge(diverged, _runs([math.inf, 0.1], [1.0, 1.0], {}), 2).holds


def test_check_exits_non_zero_when_a_mutant_passes(monkeypatch, capsys):
    claim = C.CLAIMS[0]
    accepting = C.Verdict(claim, [-4.0, -4.0], True, 1.0, {"no_averaging": [-4.0, -4.0]})
    monkeypatch.setattr(C, "evaluate", lambda claims, seeds, workers: ([accepting], []))
    assert C.main(["--only", claim.name]) == 0  # a table, no verdict on the exit code
    assert C.main(["--check", "--only", claim.name]) == 1
    assert "accepts a mutant" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        C.main(["--only", "no_such_claim"])


def test_every_claims_arms_and_mutants_exist():
    for claim in C.CLAIMS:
        assert claim.subject in C.ARMS and (claim.baseline is None or claim.baseline in C.ARMS)
        assert claim.mutants, f"{claim.name} names no mutant: it could pass a broken algorithm"
        cls = algorithms.get(C.ARMS[claim.subject].overrides["strategy.name"])
        for name in claim.mutants:
            mutants.apply(name, cls)  # applies (raises otherwise)
    assert {m for c in C.CLAIMS for m in c.mutants} == set(mutants.MUTANTS)


# ----------------------------------------------------------------------------- the check
@pytest.mark.slow
def test_every_claim_holds_and_every_mutant_is_rejected(tmp_path):
    """The paper claims, 3 seeds each, and their mutants (about 1.5-3 minutes on 2 cores)."""
    assert C.main(["--check", "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "results" / "claims.json").read_text())
    assert written["command"].startswith("python -m experiments.claims --check")
    assert [c["name"] for c in written["claims"]] == [c.name for c in C.CLAIMS]
    assert all(c["holds"] and all(m["rejected"] for m in c["mutants"].values())
               for c in written["claims"])


def test_provenance_names_the_commit_and_a_command_that_reruns_it():
    from experiments.provenance import provenance

    made = provenance("experiments.claims", ["--only", "a b", "--seeds", "3"])
    assert made["command"] == "python -m experiments.claims --only 'a b' --seeds 3"
    assert len(made["commit"]) >= 7 or made["commit"] == "unknown"
    assert all(line.strip().endswith((".py", ".yaml")) for line in made["uncommitted_code"])
