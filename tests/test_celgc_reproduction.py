"""A reduced, fixed-seed version of the CELGC experiment (docs/celgc.md): a small ReLU RNN
on tiny Shakespeare, 2 IID clients, eta = 2, gamma = 0.5 (c = 0.25), 48 local iterations."""

from __future__ import annotations

import math

import pytest

import engine
from conf import load_config

ITERATIONS = 48


def run(shakespeare_path, interval: int, **overrides):
    cfg = load_config({
        "task.name": "shakespeare", "data.path": shakespeare_path, "data.partition": "iid",
        "model.name": "rnn", "data.seq_len": 40, "data.max_train": 600, "model.width": 64,
        "train.batch_size": 16, "train.lr": 2.0, "strategy.clip_gamma": 0.5,
        "strategy.weighting": "uniform", **overrides,
    })
    return engine.run(cfg, 2, rounds=ITERATIONS // interval).records


@pytest.mark.slow
def test_clipping_is_what_keeps_the_relu_rnn_finite_and_celgc_tracks_the_baseline(shakespeare_path):
    naive = run(shakespeare_path, 1, **{"strategy.name": "naive_clipping"})
    celgc = run(shakespeare_path, 4, **{"strategy.name": "clipped_fedavg", "train.local_steps": 4})
    unclipped = run(shakespeare_path, 4, **{"strategy.name": "fedavg", "train.local_steps": 4})
    assert not all(math.isfinite(r["train_loss"]) for r in unclipped)  # diverges
    start = math.log(96)  # uniform over the 96-character vocabulary
    for records in (naive, celgc):
        assert math.isfinite(records[-1]["train_loss"]) and records[-1]["train_loss"] < start - 1.5
    # the same loss per iteration with a quarter of the communication rounds
    assert (len(naive), len(celgc)) == (48, 12)
    assert celgc[-1]["train_loss"] == pytest.approx(naive[-1]["train_loss"], abs=0.3)
    assert all(r["clip_fraction"] > 0.5 for r in celgc)  # the clipping is doing the work
