"""Clipped FedAvg (CELGC) and the naive baseline, through their hooks and the real client
handler (no Grid, no simulation)."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ConfigRecord

import tasks
from client import protocol as P
from conf import load_config, to_flat
from strategies import build_strategy
from tests.helpers import train_steps
from tests.test_fedavg import FakeGrid, client_context, client_round

CLIENTS = 4
# teacher regression, 64 training examples split IID into 4 x 16; full-batch steps
FIXED = {"task.name": "teacher", "data.num_samples": 80, "data.partition": "iid",
         "model.width": 32, "train.batch_size": 1000, "train.lr": 0.5,
         "strategy.min_train_nodes": CLIENTS, "strategy.min_available_nodes": CLIENTS,
         "strategy.weighting": "uniform"}


def rounds(cfg, rounds_: int):
    """Run the strategy for a few rounds with the real client handler; final arrays."""
    data = tasks.load_task(cfg)
    arrays = tasks.make_model(cfg, data).state_dict()
    from flwr.app import ArrayRecord

    record = ArrayRecord(arrays)
    strategy = build_strategy(cfg, ConfigRecord(to_flat(cfg)))
    all_metrics = []
    contexts = [client_context(i, CLIENTS) for i in range(CLIENTS)]  # state across rounds
    for server_round in range(1, rounds_ + 1):
        messages = list(strategy.configure_train(server_round, record, ConfigRecord(),
                                                 FakeGrid(range(CLIENTS))))
        replies = [client_round(cfg, m, i, CLIENTS, contexts[i]) for i, m in enumerate(messages)]
        record, metrics = strategy.aggregate_train(server_round, replies)
        all_metrics.append(metrics)
    return record.to_torch_state_dict(), all_metrics


def test_huge_gamma_clipped_fedavg_equals_fedavg_exactly(flower_identity):
    common = {**FIXED, "train.batch_size": 4, "train.local_steps": 3, "train.lr": 0.05}
    clipped, metrics = rounds(load_config({**common, "strategy.name": "clipped_fedavg",
                                            "strategy.clip_gamma": 1e12}), 3)
    plain, _ = rounds(load_config({**common, "strategy.name": "fedavg"}), 3)
    for name in plain:
        assert torch.equal(clipped[name], plain[name]), name
    assert all(m[P.CLIP_FRACTION] == 0.0 for m in metrics)
    assert all(m[P.GRAD_NORM] > 0 for m in metrics)


def test_small_gamma_clips_every_step_and_changes_the_result(flower_identity):
    common = {**FIXED, "train.batch_size": 4, "train.local_steps": 3, "train.lr": 0.05}
    clipped, metrics = rounds(load_config({**common, "strategy.name": "clipped_fedavg",
                                            "strategy.clip_gamma": 1e-4}), 2)
    plain, _ = rounds(load_config({**common, "strategy.name": "fedavg"}), 2)
    assert all(m[P.CLIP_FRACTION] == 1.0 for m in metrics)
    assert any(not torch.equal(clipped[n], plain[n]) for n in plain)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("gamma", [1e-3, 1e3])  # clipped, and not
def test_naive_baseline_equals_centralized_clipped_sgd_on_the_union(flower_identity, gamma, momentum):
    """Full-batch gradients on equal IID shards: their mean is the gradient on the union."""
    cfg = load_config({**FIXED, "strategy.name": "naive_clipping", "strategy.clip_gamma": gamma,
                       "train.momentum": momentum})
    hosted, metrics = rounds(cfg, 3)
    data = tasks.load_task(cfg)
    sizes = [len(tasks.client_split(cfg, i, CLIENTS)) for i in range(CLIENTS)]
    assert sizes == [16] * 4
    model = tasks.make_model(cfg, data)
    union = tasks.Split(*(torch.cat(parts) for parts in zip(*[
        (s.x, s.y) for s in (tasks.client_split(cfg, i, CLIENTS) for i in range(CLIENTS))], strict=True)))
    train_steps(model, union, tasks.make_loss(cfg, data), steps=3, batch_size=len(union),
                lr=0.5, momentum=momentum, clip_gamma=gamma)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(hosted[name], value, rtol=0, atol=1e-6)
    assert [m[P.CLIP_FRACTION] for m in metrics] == [float(gamma < 1)] * 3
    assert [m["comm_rounds"] for m in metrics] == [1, 2, 3]
    assert metrics[2]["bytes_total"] == 3 * (metrics[0]["bytes_sent"] + metrics[0]["bytes_received"])


def test_celgc_with_i1_differs_from_the_naive_baseline(flower_identity):
    """Averaging locally clipped steps is not clipping the averaged gradient."""
    common = {**FIXED, "strategy.clip_gamma": 1e-3, "train.local_steps": 1}
    celgc, _ = rounds(load_config({**common, "strategy.name": "clipped_fedavg"}), 1)
    naive, _ = rounds(load_config({**common, "strategy.name": "naive_clipping"}), 1)
    assert max(float((celgc[n] - naive[n]).abs().max()) for n in naive) > 1e-6


def test_smoothness_is_reported_when_asked(flower_identity):
    cfg = load_config({**FIXED, "strategy.name": "clipped_fedavg", "train.smoothness_every": 1,
                       "train.local_steps": 2, "train.batch_size": 4, "train.lr": 0.05})
    _, metrics = rounds(cfg, 1)
    assert metrics[0][P.SMOOTHNESS] > 0 and metrics[0][P.SMOOTHNESS_GRAD_NORM] > 0


def test_quadratic_smoothness_estimate_is_its_curvature():
    """f(w) = 0.5 * a * w^2 has ||g(x') - g(x)|| / ||x' - x|| = a exactly."""
    model = torch.nn.Linear(1, 1, bias=False)
    data = tasks.Split(torch.full((1, 1), 3.0), torch.zeros(1, 1))  # loss = 0.5 * 9 w^2
    result = train_steps(model, data, lambda out, y: 0.5 * (out - y).pow(2).sum(), steps=4,
                         batch_size=1, lr=0.01, smoothness_every=2)
    assert [round(s, 4) for _, s in result.smoothness] == [9.0, 9.0]
    assert len(result.smoothness) == 2


def test_clipped_strategy_rejects_bad_parameters():
    from algorithms.clipped import ClippedFedAvg
    from conf import ConfigError

    with pytest.raises(ConfigError, match="clip_gamma"):
        load_config({"strategy.name": "clipped_fedavg", "strategy.clip_gamma": 0.0})
    with pytest.raises(ConfigError, match="not local_epochs"):
        load_config({"strategy.name": "clipped_fedavg", "train.local_epochs": 1})
    unchecked = load_config({"strategy.name": "clipped_fedavg"})
    unchecked.train.local_epochs = 1  # past the funnel: the algorithm refuses it itself
    with pytest.raises(ValueError, match="not local_epochs"):
        ClippedFedAvg(unchecked)
