"""The theory setting of Deng, Kamani, Mahdavi (AISTATS 2022) and its measurements
(experiments/local_sgd_theory.py, tasks/drift_decomposition.py), on tiny runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import engine
from conf import load_config
from experiments import local_sgd_theory as theory
from tasks.base import Split
from tasks.drift_decomposition import drift_decomposition
from tasks.models import MLP


# ----------------------------------------------------------------------------- fit_rate
def test_fit_rate_returns_the_rate_of_an_exponential():
    r = np.arange(41)
    fit = theory.fit_rate(2.0 * np.exp(-0.3 * r))
    assert fit["rate"] == pytest.approx(0.3, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    assert fit["rounds"] == 40 and fit["intercept"] == pytest.approx(math.log(2.0))


def test_fit_rate_stops_at_the_floor_and_sees_a_bend():
    r = np.arange(30)
    losses = np.maximum(np.exp(-1.0 * r), 1e-12)  # below 1e-6 from r = 14 on, then flat
    fit = theory.fit_rate(losses)
    assert fit["rounds"] == 13 and fit["rate"] == pytest.approx(1.0)
    bent = np.exp(-1.0 * r) + 0.1 * np.exp(-0.05 * r)  # a fast mode, then a slow one
    assert theory.fit_rate(bent)["r2"] < 0.9
    late = theory.fit_rate(bent, skip=0.5)  # rounds 14-29: the slow mode alone
    assert late["rate"] == pytest.approx(0.05, rel=1e-3) and late["r2"] > 0.9999
    with pytest.raises(ValueError, match="at least 3"):
        theory.fit_rate([1.0, 0.5])


# ------------------------------------------------------------------ drift decomposition
def two_layer(width=32, seed=0):
    torch.manual_seed(seed)
    model = MLP(8, width, 1, 1, "ntk")
    model.net[-1].requires_grad_(False)
    x = torch.randn(12, 8)
    data = Split(x / x.norm(dim=1, keepdim=True), torch.randn(12, 1))
    return model, data


def loss_fn(out, y):
    return 0.5 * (out - y).pow(2).sum(1).mean()


def test_masked_forward_with_the_own_gates_is_the_forward():
    model, data = two_layer()
    gates = [h > 0 for h in model.hidden(data.x)]
    torch.testing.assert_close(model.forward_masked(data.x, gates), model(data.x))


def test_no_flips_means_no_flip_part():
    """Scaling W by a positive factor changes no ReLU gate: the drift is all kernel."""
    average, data = two_layer()
    local, _ = two_layer()
    with torch.no_grad():
        local.net[1].weight.mul_(1.05)
    out = drift_decomposition(local, average, data, loss_fn)
    assert out["pattern_flips"] == 0.0 and out["drift_flip"] == 0.0 and out["flip_share"] == 0.0
    assert out["drift_kernel"] == pytest.approx(out["drift"]) and out["drift"] > 1e-3


def test_a_change_only_through_a_switched_gate_is_all_flip():
    """Two units: unit 0 the same in both models, unit 1 off for every input under W_bar
    and moved to be on under W_k. With W_bar's gates unit 1 is masked in both, so the
    kernel part is exactly 0 and the flip share 1."""
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    data = Split(x, torch.tensor([[1.0], [-1.0]]))
    average = MLP(2, 2, 1, 1, "ntk")
    average.net[-1].requires_grad_(False)
    with torch.no_grad():
        average.net[1].weight.copy_(torch.tensor([[1.0, 0.5], [-1.0, -1.0]]))
        average.net[3].weight.copy_(torch.tensor([[1.0, 1.0]]))
    local = MLP(2, 2, 1, 1, "ntk")
    local.load_state_dict(average.state_dict())
    local.net[-1].requires_grad_(False)
    with torch.no_grad():
        local.net[1].weight[1] = torch.tensor([1.0, 1.0])
    out = drift_decomposition(local, average, data, loss_fn)
    assert out["pattern_flips"] == 0.5  # unit 1 on both inputs: 2 of 4 gates
    assert out["drift_kernel"] == 0.0 and out["flip_share"] == 1.0 and out["drift_flip"] > 0


def test_the_parts_add_up():
    """total = flip + kernel, so ||total|| lies between |f - k| and f + k."""
    average, data = two_layer(width=16, seed=1)
    local, _ = two_layer(width=16, seed=1)
    with torch.no_grad():
        local.net[1].weight.add_(0.3 * torch.randn_like(local.net[1].weight))
    out = drift_decomposition(local, average, data, loss_fn)
    assert out["pattern_flips"] > 0 and 0 < out["flip_share"] < 1
    f, k, d = out["drift_flip"], out["drift_kernel"], out["drift"]
    assert abs(f - k) - 1e-9 <= d <= f + k + 1e-9


# ------------------------------------------------------------------------- tiny runs
@pytest.fixture(scope="module")
def runs():
    """K = 4, tau = 5, 24 rounds (120 steps) at m = 64 and 1024; tau = 1 and GD at m = 64."""
    jobs = [(4, 64, 5, 24, 0), (4, 1024, 5, 24, 0), (4, 64, 1, 10, 0), (1, 64, 1, 10, 0)]
    return {job: theory.run_theory(job) for job in jobs}


def test_wide_net_converges_linearly(runs):
    run = runs[(4, 1024, 5, 24, 0)]
    s = theory.theory_summary(run)
    assert run["train_points"] == theory.TRAIN_POINTS and min(run["partition_sizes"]) >= 3
    assert s["loss_ratio"] < 0.03 and s["peak_ratio"] == 1.0  # falls, never above F_0
    assert s["r2"] > 0.95 and s["rate_round"] > 0.1  # F_24 / F_0 ~ exp(-0.15 * 24)
    assert all(b < a for a, b in zip(run["loss"], run["loss"][1:]))
    assert s["eta_lambda_max_local"] < 2  # the local step is stable


def test_drift_parts_are_fractions_and_flips_shrink_with_width(runs):
    narrow = theory.theory_summary(runs[(4, 64, 5, 24, 0)])
    wide = theory.theory_summary(runs[(4, 1024, 5, 24, 0)])
    for s in (narrow, wide):
        assert 0 <= s["flip_share_mean"] <= 1 and 0 <= s["pattern_flips_mean"] <= 1
    # 16x the width: gates flipped ~ m^-1/2 (4x fewer), the flip part ~ their square root
    assert wide["pattern_flips_mean"] < narrow["pattern_flips_mean"] / 2.5
    assert wide["drift_flip_mean"] < narrow["drift_flip_mean"] / 1.5
    assert wide["flip_share_mean"] < narrow["flip_share_mean"]
    assert wide["weight_change_l0"] < narrow["weight_change_l0"] / 3  # lazier: ~ m^-1/2


def test_one_local_step_is_centralised_gd(runs):
    """FedAvg weighted by examples, one full-batch step: exactly GD on F."""
    local, gd = runs[(4, 64, 1, 10, 0)]["loss"], runs[(1, 64, 1, 10, 0)]["loss"]
    np.testing.assert_allclose(local, gd, rtol=1e-4)
    assert local[-1] < 0.7 * local[0]


def test_the_loop_equals_the_engine(runs):
    cfg = load_config({**theory.theory_overrides(64, 5, 0), "run.diagnostics": True})
    records = engine.run(cfg, 4, rounds=6).records
    ours = runs[(4, 64, 5, 24, 0)]["loss"][1:7]
    np.testing.assert_allclose([r["global_train_loss"] for r in records], ours, rtol=1e-5)


def test_tables(runs):
    both = list(runs.values())
    text = theory.tables(both, 10)
    assert "| 4 | 5 | 1024 |" in text and "| 1 (GD) | 1 | 64 |" in text
    assert "| 4 | 1 | 64 |" in text.split("Equal gradient steps")[1]
    assert theory.loss_at_step(runs[(4, 64, 5, 24, 0)], 10) == runs[(4, 64, 5, 24, 0)]["loss"][2]
    with pytest.raises(ValueError, match="multiple of tau"):
        theory.loss_at_step(runs[(4, 64, 5, 24, 0)], 7)


@pytest.mark.slow  # matplotlib: ~5 s
def test_figures(runs, tmp_path):
    paths = theory.figures(list(runs.values()), tmp_path, 10)
    assert len(paths) == 5 and all(p.stat().st_size > 0 for p in paths)
