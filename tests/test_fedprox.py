"""FedProx (``algorithms/fedprox.py``): the proximal local objective f + mu/2 ||x - x_0||^2,
FedAvg exactly at mu = 0, and a pull towards the global model that grows with mu. That both
drivers agree is tests/test_drivers.py."""

from __future__ import annotations

import copy

import pytest
import torch

import engine
from conf import load_config
from tasks.base import Split
from tasks.models import MLP
from tests.helpers import train_steps
from tests.test_clipped import CLIENTS, FIXED

COMMON = {**FIXED, "train.batch_size": 4, "train.local_steps": 5, "train.lr": 0.1}


def test_local_steps_minimise_the_proximal_objective():
    """Our loop with mu == torch's SGD on loss + mu/2 ||x - x_0||^2 (full batch, autograd)."""
    torch.manual_seed(0)
    model, data = MLP(5, 8, 2, 3), Split(torch.randn(20, 5), torch.randint(0, 3, (20,)))
    reference = copy.deepcopy(model)
    anchor = [p.detach().clone() for p in reference.parameters()]
    mu, loss_fn = 0.7, torch.nn.functional.cross_entropy
    train_steps(model, data, loss_fn, steps=6, batch_size=len(data), lr=0.1, momentum=0.5, prox_mu=mu)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.5)
    for _ in range(6):
        opt.zero_grad()
        prox = sum(((p - a) ** 2).sum() for p, a in zip(reference.parameters(), anchor, strict=True))
        (loss_fn(reference(data.x), data.y) + mu / 2 * prox).backward()
        opt.step()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_mu_zero_is_fedavg_bit_for_bit():
    prox = engine.run(load_config({**COMMON, "strategy.name": "fedprox", "strategy.proximal_mu": 0.0}),
                      CLIENTS, rounds=3).state
    plain = engine.run(load_config({**COMMON, "strategy.name": "fedavg"}), CLIENTS, rounds=3).state
    assert all(torch.equal(prox[k], plain[k]) for k in plain)


def test_a_larger_mu_keeps_the_global_model_closer_to_where_it_started():
    def moved(mu: float) -> float:
        cfg = load_config({**COMMON, "strategy.name": "fedprox", "strategy.proximal_mu": mu})
        start = engine.run(cfg, CLIENTS, rounds=0).state
        end = engine.run(cfg, CLIENTS, rounds=1).state
        return sum(float((end[k] - start[k]).pow(2).sum()) for k in end) ** 0.5

    distances = [moved(mu) for mu in (0.0, 1.0, 10.0)]
    assert distances[0] > distances[1] > distances[2] > 0


def test_negative_mu_is_refused_by_the_config():
    from conf import ConfigError

    with pytest.raises(ConfigError, match="proximal_mu"):
        load_config({"strategy.name": "fedprox", "strategy.proximal_mu": -0.1})
