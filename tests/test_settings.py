"""The per-round settings (``algorithms.settings``): the learning-rate schedules in closed
form, CELGC's gamma following eta, and every algorithm and both drivers training with them."""

from __future__ import annotations

import math

import pytest
import torch

import algorithms
import engine
from algorithms.settings import lr_scale, round_settings
from conf import load_config
from tests.test_clipped import CLIENTS, FIXED


def test_constant_is_exactly_one():
    assert all(lr_scale("constant", r, 7) == 1.0 for r in range(1, 8))


def test_step_decays_every_s_rounds():
    got = [lr_scale("step", r, 9, decay=0.5, step_rounds=2) for r in range(1, 8)]
    assert got == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125]


def test_cosine_runs_from_one_to_the_floor():
    got = [lr_scale("cosine", r, 5, min_factor=0.1) for r in range(1, 6)]
    want = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert got == pytest.approx(want) and got[0] == 1.0 and got[-1] == pytest.approx(0.1)
    assert lr_scale("cosine", 1, 1) == 1.0  # one round: no division by zero


def test_warmup_cosine_ramps_linearly_then_follows_the_cosine():
    got = [lr_scale("warmup_cosine", r, 6, warmup_rounds=2, min_factor=0.0) for r in range(1, 7)]
    want = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(4)]
    assert got == pytest.approx(want) and got[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("bad", [{"schedule": "linear"}, {"r": 0}])
def test_bad_schedule_arguments_are_refused(bad):
    args = {"schedule": "step", "r": 1, **bad}
    with pytest.raises(ValueError):
        lr_scale(args["schedule"], args["r"], 5)


@pytest.mark.parametrize("schedule", ["constant", "step", "cosine", "warmup_cosine"])
@pytest.mark.parametrize("name", algorithms.names())
def test_every_algorithm_takes_eta_from_the_schedule(name, schedule):
    cfg = load_config({"strategy.name": name, "train.lr_schedule": schedule, "run.rounds": 6,
                       "train.lr_step_rounds": 2, "train.lr": 0.2})
    for r in range(1, 7):
        s = round_settings(cfg, r)
        scale = lr_scale(schedule, r, 6, decay=cfg.train.lr_decay, step_rounds=2,
                         min_factor=cfg.train.lr_min_factor, warmup_rounds=cfg.train.lr_warmup_rounds)
        assert s.lr == pytest.approx(0.2 * scale) and s.round == r
        if s.clip_gamma is not None:  # gamma / eta, the clipping norm, stays fixed
            assert s.clip_gamma == pytest.approx(cfg.strategy.clip_gamma * s.lr / 0.2)


def test_constant_schedule_leaves_eta_and_gamma_bit_for_bit():
    cfg = load_config({"strategy.name": "clipped_fedavg", "train.lr": 0.07, "strategy.clip_gamma": 0.3})
    s = round_settings(cfg, 5)
    assert (s.lr, s.clip_gamma) == (0.07, 0.3)


@pytest.mark.parametrize("name", algorithms.names())
def test_a_vanishing_eta_stops_training_after_round_one(name):
    """``step`` with a decay of 1e-9 each round: rounds 2 and 3 barely move the model. Were
    the schedule ignored anywhere on the training path, they would move it as much as round 1."""
    overrides = {**FIXED, "strategy.name": name, "train.batch_size": 4, "train.local_steps": 3,
                 "train.lr": 0.1, "strategy.period": 1, "train.local_epochs": 0}
    if name == "gossip_pga":
        overrides["train.local_steps"] = 1
    decayed = {**overrides, "train.lr_schedule": "step", "train.lr_step_rounds": 1, "train.lr_decay": 1e-9}
    one = engine.run(load_config(overrides), CLIENTS, rounds=1).state
    three = engine.run(load_config(decayed), CLIENTS, rounds=3).state
    plain = engine.run(load_config(overrides), CLIENTS, rounds=3).state
    for key in one:
        torch.testing.assert_close(three[key], one[key], rtol=0, atol=1e-6)
    assert any((plain[k] - one[k]).abs().max() > 1e-3 for k in one)
