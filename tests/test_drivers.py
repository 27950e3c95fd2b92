"""The contract between the two drivers of every registered algorithm: the Flower strategy
(its hooks, with the real ClientApp handler and no Grid) and the one-process engine give the
same models and metrics, for every algorithm in ``algorithms`` (a new one is covered by
registering it) and with a learning-rate schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

import algorithms
import engine
import tasks
from client import protocol as P
from conf import load_config, to_flat
from strategies import build_strategy
from tests.test_clipped import CLIENTS, FIXED, rounds
from tests.test_fedavg import client_context, client_round
from tests.test_gossip import FakeGrid

SERVER_CENTRED = [n for n in algorithms.names() if not algorithms.get(n).decentralized]
DECENTRALIZED = [n for n in algorithms.names() if algorithms.get(n).decentralized]
SETTINGS = {"strategy.clip_gamma": 0.05, "strategy.proximal_mu": 0.5, "train.batch_size": 4,
            "train.local_steps": 3, "train.lr": 0.1, "train.momentum": 0.9,
            "train.persist_optimizer_state": True}
SCHEDULES = {"constant": {}, "cosine": {"train.lr_schedule": "cosine", "run.rounds": 3},
             "step": {"train.lr_schedule": "step", "train.lr_step_rounds": 1, "train.lr_decay": 0.3}}


def test_every_algorithm_is_covered():
    assert set(SERVER_CENTRED) >= {"fedavg", "clipped_fedavg", "naive_clipping", "fedprox"}
    assert DECENTRALIZED == ["gossip_pga"]


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("name", SERVER_CENTRED)
def test_hosted_strategy_equals_the_engine(flower_identity, name, schedule):
    cfg = load_config({**FIXED, **SETTINGS, **SCHEDULES[schedule], "strategy.name": name})
    hosted, metrics = rounds(cfg, 3)
    out = engine.run(cfg, CLIENTS, rounds=3)
    for key, value in out.state.items():
        torch.testing.assert_close(hosted[key], value, rtol=0, atol=1e-6)
    for ours, theirs in zip(metrics, out.records, strict=True):
        assert ours[P.TRAIN_LOSS] == pytest.approx(theirs["train_loss"], rel=1e-5)
        assert ours[P.CLIP_FRACTION] == pytest.approx(theirs["clip_fraction"], abs=1e-9)
        assert ours[P.GRAD_NORM] == pytest.approx(theirs["grad_norm"], rel=1e-5)


def hosted_gossip(cfg, n: int, iterations: int) -> np.ndarray:
    """Gossip-PGA through its Flower hooks with the real ClientApp handler; the node models."""
    model = tasks.make_model(cfg, tasks.load_task(cfg))
    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)), num_nodes=n)
    record = ArrayRecord(model.state_dict())
    contexts = [client_context(i, n) for i in range(n)]
    node_ids = [c.node_id for c in contexts]
    for server_round in range(1, iterations + 1):
        messages = strategy.configure_train(server_round, record, ConfigRecord(), FakeGrid(node_ids))
        replies = [client_round(cfg, m, m.metadata.dst_node_id - 100, n,
                                contexts[m.metadata.dst_node_id - 100]) for m in messages]
        record, _ = strategy.aggregate_train(server_round, replies)
    return strategy.X


@pytest.mark.parametrize("schedule", ["constant", "step"])
@pytest.mark.parametrize("name", DECENTRALIZED)
def test_hosted_gossip_equals_the_engine(flower_identity, name, schedule):
    n = 4
    cfg = load_config({**FIXED, **SETTINGS, **SCHEDULES[schedule], "strategy.name": name,
                       "train.local_steps": 1, "strategy.period": 3})
    got = hosted_gossip(cfg, n, 5)
    want = engine.run(cfg, n, 5).X
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.abs(want - want.mean(0)).max() > 1e-4  # iteration 5 is a gossip step


def test_the_algorithms_and_the_engine_import_no_flwr():
    """The halves are plain PyTorch/NumPy: importing every algorithm and the engine (and
    building one round's settings) loads no flwr module."""
    import subprocess
    import sys

    code = ("import sys, algorithms, engine; algorithms.names(); "
            "from algorithms.settings import round_settings; "
            "print(sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
