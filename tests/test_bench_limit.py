"""The benchmark's ``limit`` system (``bench.limit``): fedlocal's SGD steps spread over
long-lived worker processes give the engine's model, and the round's clients are shared
out evenly."""

from __future__ import annotations

import pytest
import torch

import engine
from bench import limit
from conf import load_config

TINY = {"task.name": "digits", "run.rounds": 2, "strategy.fraction_train": 0.75,
        "strategy.min_train_nodes": 2, "strategy.min_available_nodes": 4,
        "strategy.weighting": "examples"}


def test_limit_equals_the_engine():
    """digits, 4 clients (3 sampled per round, so the two workers get uneven shares),
    2 rounds, 2 worker processes: the final model is the engine's."""
    run = limit.run(TINY, 4, 2, processes=2)
    cfg = load_config(TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count, so the matmuls add up alike
    try:
        expected = engine.run(cfg, 4, 2)
    finally:
        torch.set_num_threads(threads)
    assert [r["num_replies"] for r in run.records] == [len(c) for c in engine.sampled_clients(cfg, 4, 2)]
    assert run.state.keys() == expected.state.keys()
    for name, tensor in expected.state.items():
        torch.testing.assert_close(run.state[name], tensor, rtol=0, atol=1e-6)
    assert len(run.round_seconds) == 2 and run.processes == 2
    assert 0 <= run.records[-1]["test_accuracy"] <= 1


def test_assign_balances_the_costliest_first():
    assert limit.assign({0: 5, 1: 3, 2: 3, 3: 1}, 2) == [[0, 3], [1, 2]]
    assert limit.assign({7: 1}, 3) == [[7], [], []]


def test_limit_refuses_what_it_does_not_model():
    with pytest.raises(ValueError, match="decentralized"):
        limit.check(load_config({"strategy.name": "gossip_pga"}))
    with pytest.raises(ValueError, match="persist_optimizer_state"):
        limit.check(load_config({"train.persist_optimizer_state": True}))
