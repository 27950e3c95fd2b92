"""A reduced reproduction of Deng, Kamani, Mahdavi (AISTATS 2022) with fixed seeds: the
lazy-training diagnostics the full sweep (experiments/local_sgd_relu.py) reports, in
seconds. That Local GD drives the averaged model's loss to zero, and that it fails to with
the averaging removed or stale, is a claim check (experiments.claims, tests/test_claims.py).

Setting: teacher task, K = 4 non-IID (Dirichlet over target deciles) clients, two-layer
ReLU student, full-batch local GD with tau = 5 steps, eta = 32/m, 10 rounds, m in {64, 1024}.
"""

from __future__ import annotations

import pytest

from experiments import local_sgd_relu as exp

ROUNDS = 10


@pytest.fixture(scope="module")
def runs():
    return {m: exp.run_one((4, m, 5, ROUNDS, 0)) for m in (64, 1024)}


def test_the_wider_network_moves_less_relative_to_its_init(runs):
    narrow, wide = exp.summary(runs[64]), exp.summary(runs[1024])
    # lazy regime: 16x the width, at least 4x (= sqrt 16) less relative movement
    assert wide["weight_change"] < narrow["weight_change"] / 4
    assert wide["weight_change_l1"] < narrow["weight_change_l1"]  # output layer too


def test_fewer_relu_patterns_flip_in_the_wider_network(runs):
    narrow, wide = exp.summary(runs[64]), exp.summary(runs[1024])
    assert 0 < wide["activation_flips"] < narrow["activation_flips"] / 4


def test_gradient_drift_is_smaller_in_the_wider_network(runs):
    narrow, wide = exp.summary(runs[64]), exp.summary(runs[1024])
    assert 0 < wide["drift_max"] < narrow["drift_max"]
    assert wide["drift_mean"] < narrow["drift_mean"]


def test_one_local_step_has_no_drift():
    run = exp.run_one((4, 64, 1, 2, 0))
    assert all(r["gradient_drift_max"] == 0.0 for r in run["records"])


@pytest.mark.slow
def test_table_and_figures_are_written(runs, tmp_path):
    both = list(runs.values())
    assert exp.table(both, 0.5).count("\n") == 3
    assert set(exp.slopes(both)["K=4 tau=5"]) >= {"weight_change", "activation_flips", "drift_max"}
    paths = exp.figures(both, tmp_path)
    assert len(paths) == 5 and all(p.stat().st_size > 0 for p in paths)
